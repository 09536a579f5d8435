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
# the module and checked by supervisor/shm.py at import, so a stale build fails
# loudly at import instead of at run time.
BUILD_STAMP = 1


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


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "supervisor._sagashm",
    f'#include "sagashm.h"\n#define SSM_BUILD_STAMP {BUILD_STAMP}\n',
    # setuptools wants paths relative to setup.py; build.py is beside it
    sources=["csrc/sagashm.c"],
    include_dirs=["csrc"],
    extra_compile_args=_extra_compile_args(),
    libraries=["rt"],
)

if __name__ == "__main__":
    os.chdir(HERE)
    ffibuilder.compile(tmpdir="build", verbose=True)
