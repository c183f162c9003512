"""Warn once per process: a fallback or a no-effect argument is said once, not on every call."""
import warnings

WARNED = set()  # keys already warned about (tests clear it)


def warn_once(key, message: str, stacklevel: int = 2) -> None:
    """``warnings.warn(message)`` the first time ``key`` is seen; ``stacklevel`` counts from warn_once's caller,
    as ``warnings.warn``'s does from its own."""
    if key not in WARNED:
        WARNED.add(key)
        warnings.warn(message, stacklevel=stacklevel + 1)
