"""Values derived from a manifest, computed once per manifest object while it is live, not once per request.

Keyed by the object's identity (a manifest is replaced, never changed, when a bundle goes live), with the object kept
beside the value so that a recycled ``id`` never answers for another manifest. At most a few manifests are live at
once (the live one and one being warmed), so the cache is simply emptied when it passes a small bound.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from liverank.store.manifest import Manifest

T = TypeVar("T")

_MAX_MANIFESTS = 16


def per_manifest(derive: Callable[[Manifest], T]) -> Callable[[Manifest], T]:
    """``derive(manifest)``, remembered for each manifest object."""
    cache: dict[int, tuple[Manifest, T]] = {}

    @functools.wraps(derive)
    def cached(manifest: Manifest) -> T:
        hit = cache.get(id(manifest))
        if hit is not None and hit[0] is manifest:
            return hit[1]
        value = derive(manifest)
        if len(cache) > _MAX_MANIFESTS:
            cache.clear()
        cache[id(manifest)] = (manifest, value)
        return value

    return cached
