"""The package's one C extension; everything else is declared in pyproject.toml.

In setup.py rather than pyproject.toml because setuptools still calls its ext-modules table
experimental, and every build fetches the newest setuptools.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "castore_client._fastcdc",
            sources=["castore_client/_fastcdc.c"],
            extra_compile_args=["-O3"],
        )
    ]
)
