"""Numba options in one place.

- ``serving_jit``: kernels the ad-serving path calls. ``cache=True`` and ``nogil=True`` so
  that several request threads can score at once, never ``parallel``.
- ``batch_jit``: batch kernels; may use ``parallel=True``.
- ``exact_jit``: kernels whose results must be bit-identical between two call sites (the batch
  feature builder and the online updater share them); no fastmath, since ``contract`` and
  ``reassoc`` let the compiler fuse or reorder differently in different inlining contexts.

``FASTMATH`` never includes ``nnan`` or ``ninf``: missing values are NaN in bta and must
compare as NaN.

Caching: numba writes compiled code next to the module (or to ``NUMBA_CACHE_DIR``). When
neither place is writable (a read-only site-packages in a container) numba refuses to
decorate a ``cache=True`` function at import time; we then fall back to in-memory
compilation with one warning, so that import never breaks. Numba keys its cache on the
source file's modification time and size, so an upgraded bta never reuses stale code.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Callable, Iterator

import numba

__all__ = ["FASTMATH", "serving_jit", "batch_jit", "exact_jit", "num_threads"]

logger = logging.getLogger("bta")

#: fastmath flags allowed in bta kernels: everything but ``nnan``/``ninf``.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

_cache_ok: bool | None = None


def _jit(options: dict[str, Any], signature: Any = None) -> Callable:
    def decorate(func: Callable) -> Callable:
        global _cache_ok
        opts = dict(options)
        if _cache_ok is False:
            opts["cache"] = False
        try:
            return numba.njit(signature, **opts)(func) if signature else numba.njit(**opts)(func)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            if "cache" not in str(exc):
                raise
            _cache_ok = False
            warnings.warn(
                f"numba cannot write its cache ({exc}); bta kernels will compile in memory "
                "at each start. Set NUMBA_CACHE_DIR to a writable directory to avoid this.",
                RuntimeWarning,
                stacklevel=2,
            )
            opts["cache"] = False
            return numba.njit(signature, **opts)(func) if signature else numba.njit(**opts)(func)

    return decorate


def serving_jit(signature: Any = None) -> Callable:
    """Decorator for kernels on the serving path: cached, GIL released, no parallelism."""
    return _jit({"cache": True, "nogil": True, "fastmath": set(FASTMATH)}, signature)


def exact_jit(signature: Any = None, *, inline: bool = False) -> Callable:
    """Decorator for kernels that must be bit-identical wherever they are called.

    ``inline=True`` inlines the function into its callers at numba's IR level: for small
    helpers called in a kernel's inner loop with array arguments, where a real call (array
    structs passed and reference-counted per call) would cost more than the work.
    """
    opts: dict[str, Any] = {"cache": True, "nogil": True}
    if inline:
        opts["inline"] = "always"
    return _jit(opts, signature)


def batch_jit(parallel: bool = False, fastmath: bool = False) -> Callable:
    """Decorator for batch kernels (optionally ``parallel=True``)."""
    opts: dict[str, Any] = {"cache": True, "nogil": True, "parallel": parallel}
    if fastmath:
        opts["fastmath"] = set(FASTMATH)
    return _jit(opts)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily set numba's thread count (restored on exit, even on error)."""
    if n is None:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)
