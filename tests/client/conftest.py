"""The real-server fixtures of tests/serving, shared."""

from tests.serving.conftest import server, tiny_bundle

__all__ = ["server", "tiny_bundle"]
