"""cffi build script (API mode) for the shared-memory hot path.

The C header in ``csrc/`` *is* the cdef: pycparser reads it, so it holds plain
integer types only (atomics live in the ``.c`` file).  Build switches are read
here and nowhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
HEADER = CSRC / "sagashm.h"

# Bumped with every change to the C ABI or the segment layout; compiled into
# the module and checked by supervisor/shmem/binding.py at import, so a stale build fails
# loudly at import instead of at run time.
BUILD_STAMP = 4


def _cdef_text() -> str:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    # keep #define NAME <int> lines (cffi accepts them as integer constants)
    return text + "\n#define SSM_BUILD_STAMP ...\n"


def _extra_compile_args() -> list[str]:
    args = ["-std=c11", "-O2", "-Wall", "-Wextra"]
    if os.environ.get("SAGA_SHM_DEBUG") == "1":
        args = [a for a in args if a != "-O2"] + ["-O0", "-g"]
    return args


# cffi wraps every call in Py_BEGIN/END_ALLOW_THREADS. Every ssm_ function is
# a few atomic instructions and never blocks, so releasing the GIL costs more
# than the call; worse, with another busy Python thread in the process each
# re-take can wait a whole switch interval (profiled: ~2 us per claim check in
# the supervisor loop while a launcher thread spawns). The wrappers are
# emitted after this preamble, so redefining the macros here keeps the GIL.
# SAGA_SHM_RELEASE_GIL=1 restores cffi's default (for comparison).
_KEEP_GIL = "" if os.environ.get("SAGA_SHM_RELEASE_GIL") == "1" else """
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
"""

ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "supervisor._sagashm",
    f'#include "sagashm.h"\n#define SSM_BUILD_STAMP {BUILD_STAMP}\n{_KEEP_GIL}',
    # setuptools wants paths relative to setup.py; build.py is beside it
    sources=["csrc/sagashm.c"],
    include_dirs=["csrc"],
    extra_compile_args=_extra_compile_args(),
    libraries=["rt"],
    # the limited API: one cp310-abi3 wheel per platform (setup.py tags it)
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE)
    ffibuilder.compile(tmpdir="build", verbose=True)
