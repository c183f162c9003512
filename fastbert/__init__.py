"""fastbert: an exact, drop-in BERT with fused Triton kernels and a C++ WordPiece tokenizer.

``from fastbert import BertModel, BertTokenizer`` replaces the Hugging Face imports. Importing fastbert
never imports triton and never touches a GPU.
"""
__version__ = "0.1.0"
