"""fastbert's Triton kernels (installed as ``fastbert.kernels``).

This is the only package that imports triton. Nothing here touches a GPU at import time; modules are
imported lazily by ``fastbert.ops`` the first time a kernel is needed.
"""
