"""The setuptools shim: cffi_modules cannot be declared in pyproject.toml
alone, so the cffi builder (build.py) is handed to setuptools here.

Two more things only code can say: the wheel is built for the limited API
(cp310-abi3: one wheel per platform serves CPython 3.10 and later), and a
missing C compiler is reported as what to install, not as a traceback.
"""

from __future__ import annotations

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

NO_COMPILER = """
saga-supervisor builds a small C extension (its shared-memory hot path) and
needs a C compiler and the Python headers for it:

  Debian, Ubuntu:        apt-get install gcc python3-dev
  Fedora, RHEL:          dnf install gcc python3-devel
  Alpine:                apk add gcc musl-dev python3-dev
  macOS:                 xcode-select --install   (POSIX shared memory; Linux is tested)

or install a prebuilt wheel for your platform. The compiler said: {error}
"""


class BuildExt(build_ext):
    """build_ext that explains a missing or broken compiler."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, DistutilsExecError, PlatformError, ...
            names = {c.__name__ for c in type(exc).__mro__}
            if names & {"CompileError", "DistutilsExecError", "CCompilerError",
                        "DistutilsPlatformError", "PlatformError", "LinkError"}:
                sys.stderr.write(NO_COMPILER.format(error=exc))
                raise SystemExit(f"error: no working C compiler ({exc})") from None
            raise


setup(
    cffi_modules=["build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
