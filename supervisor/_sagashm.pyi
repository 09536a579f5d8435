# Stub for the cffi-compiled module (built by build.py from csrc/). Only
# supervisor/shmem/binding.py imports it; cffi's `ffi` and `lib` are untyped by nature.
from typing import Any

ffi: Any
lib: Any
