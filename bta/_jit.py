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
compilation with one warning, so that import never breaks.

Numba keys a cached kernel on its own source file only. A bta kernel often calls (or inlines)
kernels of another file, and its cached machine code contains theirs: with numba's key alone,
an edit to ``segment/rules/kernels.py`` would leave ``serve/_kernels.py``'s cached kernels
running the old rule interpreter. So for files of the bta package the cache key also holds a
digest of every kernel file of the package (a file that defines a ``*_jit`` kernel): a change
to any of them recompiles every bta kernel, and nothing else does. An upgraded or edited bta
never reuses stale code. See :func:`_register_cache_locators`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numba
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["FASTMATH", "serving_jit", "batch_jit", "exact_jit", "serial_copy", "num_threads",
           "prefetch"]

logger = logging.getLogger("bta")

#: fastmath flags allowed in bta kernels: everything but ``nnan``/``ninf``.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

_cache_ok: bool | None = None

#: Package roots whose kernels are keyed on all their kernel files (see the module docstring).
_CACHE_ROOTS: list[Path] = [Path(__file__).resolve().parent]
_KERNEL_DEF = re.compile(rb"^@(serving_jit|exact_jit|batch_jit)\b", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _kernel_digest(root: Path) -> str:
    """SHA-256 over the kernel files under ``root`` (their paths and contents), once a process."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        data = path.read_bytes()
        if path.name == "_jit.py" or _KERNEL_DEF.search(data):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def _root_of(py_file: str) -> Path | None:
    try:
        path = Path(py_file).resolve()
    except (OSError, RuntimeError):
        return None
    for root in _CACHE_ROOTS:
        if root in path.parents:
            return root
    return None


def _register_cache_locators() -> bool:
    """Put locators that key bta's kernels on all its kernel files ahead of numba's own.

    Each wraps one of numba's file-backed locators (``NUMBA_CACHE_DIR``, the package's
    ``__pycache__``, the user-wide cache; in numba's order, so ``NUMBA_CACHE_DIR`` is still
    honored) and claims only files under :data:`_CACHE_ROOTS`; other libraries' kernels keep
    numba's key. These are numba internals: if this numba lacks them, bta keeps numba's own
    key (a debug log line says so) and everything else works as before.
    """
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba without its caching module
        return False
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    bases = []
    for name in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator"):
        cls = getattr(caching, name, None) or getattr(caching, "_" + name, None)
        if cls is None or not hasattr(cls, "get_source_stamp"):
            bases = []
            break
        bases.append(cls)
    classes = getattr(impl, "_locator_classes", None)
    if not bases or not isinstance(classes, list):
        logger.debug("numba's cache locators not found; bta kernels keep numba's cache key")
        return False
    if any(getattr(c, "_bta_package_key", False) for c in classes):
        return True

    def make(base: type) -> type:
        class PackageKeyed(base):  # type: ignore[misc, valid-type]
            _bta_package_key = True

            @classmethod
            def from_function(cls, py_func, py_file):
                root = _root_of(py_file)
                if root is None:
                    return None
                self = super().from_function(py_func, py_file)
                if self is not None:
                    self._bta_root = root
                return self

            def get_source_stamp(self):
                return (super().get_source_stamp(), _kernel_digest(self._bta_root))

        PackageKeyed.__name__ = PackageKeyed.__qualname__ = "PackageKeyed" + base.__name__
        return PackageKeyed

    classes[:0] = [make(b) for b in bases]
    return True


_register_cache_locators()


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


def batch_jit(parallel: bool = False, fastmath: bool = False, inline: bool = False
              ) -> Callable:
    """Decorator for batch kernels (optionally ``parallel=True``).

    ``inline=True``: inlined into its callers at numba's IR level, as for
    :func:`exact_jit`; for per-row helpers whose call (array structs passed per row) would
    cost more than their work.
    """
    opts: dict[str, Any] = {"cache": True, "nogil": True, "parallel": parallel}
    if fastmath:
        opts["fastmath"] = set(FASTMATH)
    if inline:
        opts["inline"] = "always"
    return _jit(opts)


def serial_copy(kernel: Any, name: str) -> Callable:
    """``kernel`` (a ``batch_jit(parallel=True)`` kernel) compiled again without threads, under
    another name: for small inputs, or for callers that are threads of a pool already (a Dask
    worker), where numba's thread pool would be entered concurrently.

    The copy has its own name because numba's on-disk cache is keyed by the function's
    qualified name and source line, not by compile flags: compiling the same function twice
    (threaded and serial) would let one variant load the other's cached machine code.
    """
    import types

    func = kernel.py_func
    code = (func.__code__.replace(co_name=name, co_qualname=name)
            if hasattr(func.__code__, "co_qualname") else func.__code__.replace(co_name=name))
    copy = types.FunctionType(code, func.__globals__, name, func.__defaults__,
                              func.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = func.__doc__
    return batch_jit(parallel=False)(copy)


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


# The intrinsic's name carries its pointer type: opaque "ptr" from LLVM 15 on, "i8*" before.
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch element (row) ``idx`` of ``arr`` into cache (``llvm.prefetch``,
    write intent, high locality), for kernels whose rows are independent lookups into a
    table larger than the cache. A hint only: it never faults and changes no result."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer2(
            context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
            cgutils.unpack_tuple(builder, ary.strides), aryty.layout,
            [index] + [zero] * (aryty.ndim - 1), wraparound=False, boundscheck=False)
        i32 = ir.IntType(32)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
