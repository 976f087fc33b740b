"""Builds the store's small C gather kernel; everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "liverank.store._kernel",
            sources=["store/_kernel.c"],
            extra_compile_args=["-O3", "-std=c11"],
        )
    ]
)
