"""The serving tests' tiny bundle, for the load test's pushes to a real server."""

from tests.serving.conftest import tiny_bundle

__all__ = ["tiny_bundle"]
