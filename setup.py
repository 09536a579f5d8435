# cffi_modules cannot be declared in pyproject.toml alone: this shim is the
# standard way to hand the cffi builder to setuptools.
from setuptools import setup

setup(cffi_modules=["build.py:ffibuilder"])
