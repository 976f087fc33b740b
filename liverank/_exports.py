"""Lazy package exports (PEP 562), shared by the packages whose public names live in heavy modules.

A package lists where each public name lives; ``from liverank.store import EmbeddingStore`` then imports only
``liverank.store.embedding_store``, so that a caller of the pure codecs never loads LMDB, and a caller of the push
client never loads torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports each name from its home module on first use."""
    where = {name: module for module, names in homes.items() for name in names}

    def attribute(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return attribute
