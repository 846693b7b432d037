"""The numba cache of bta kernels is never stale across files (see :mod:`bta._jit`).

Numba keys a cached kernel on its own file. A kernel that calls a kernel of another file holds
that kernel's machine code, so an edit to the callee alone must still recompile the caller.
Each step runs in a fresh interpreter, as a restarted process would load the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bta import _jit

CALLER = """
from bta._jit import exact_jit
from kpkg.callee import g


@exact_jit()
def f(x):
    return g(x) + 1
"""

CALLEE = """
from bta._jit import exact_jit


@exact_jit()
def g(x):
    return x * {k}
"""

RUN = """
import sys
from pathlib import Path
import bta._jit as j
j._CACHE_ROOTS.append(Path(sys.argv[1]).resolve())
from kpkg.caller import f
print(f(10), f.stats.cache_hits[f.signatures[0]] if f.signatures else 0)
"""


def _run(root: Path) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root.parent), *sys.path])}
    env.pop("NUMBA_CACHE_DIR", None)  # the package's own __pycache__, in the temporary tree
    out = subprocess.run([sys.executable, "-c", RUN, str(root)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    value, hits = out.stdout.split()
    return int(value), int(hits)


@pytest.mark.skipif(not _jit._register_cache_locators(),
                    reason="this numba has no cache locator classes to extend")
def test_editing_a_callee_recompiles_its_callers(tmp_path):
    root = tmp_path / "kpkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "caller.py").write_text(textwrap.dedent(CALLER))
    callee = root / "callee.py"
    callee.write_text(textwrap.dedent(CALLEE.format(k=2)))

    assert _run(root) == (21, 0)  # compiled, and written to the cache
    assert _run(root) == (21, 1)  # a new process loads it from the cache
    callee.write_text(textwrap.dedent(CALLEE.format(k=3)))  # the caller's file is untouched
    assert _run(root) == (31, 0)  # recompiled: numba's own key would have loaded 21
    assert _run(root) == (31, 1)


def test_only_package_files_are_claimed(tmp_path):
    assert _jit._root_of(_jit.__file__) == _jit._CACHE_ROOTS[0]
    assert _jit._root_of(str(tmp_path / "elsewhere.py")) is None
    assert _jit._root_of(os.__file__) is None


def test_the_digest_covers_kernel_files_only(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "_k.py").write_text("@exact_jit()\ndef f():\n    return 1\n")
    (root / "plain.py").write_text("x = 1\n")
    before = _jit._kernel_digest.__wrapped__(root)
    (root / "plain.py").write_text("x = 2\n")  # not a kernel file: same key
    assert _jit._kernel_digest.__wrapped__(root) == before
    (root / "_k.py").write_text("@exact_jit()\ndef f():\n    return 2\n")
    assert _jit._kernel_digest.__wrapped__(root) != before
