"""Builds the two small C extensions (the store's gather kernel, the ranking body's id columns); everything else is
declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "liverank.store._kernel",
            sources=["store/_kernel.c"],
            extra_compile_args=["-O3", "-std=c11"],
        ),
        # The ranking body's integer id columns, read without a Python int per id (serving/rank_body.py).
        Extension(
            "liverank.serving._rank_body",
            sources=["serving/_rank_body.c"],
            extra_compile_args=["-O3", "-std=c11"],
        ),
    ]
)
