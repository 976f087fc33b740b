"""The stream's object stores (JetStream object-store buckets beside the stream): large deltas, bundles, snapshots.

Two buckets: ``<stream>-deltas`` (objects expire with the stream's records) and ``<stream>-state`` (bundles and
snapshots, kept until replaced).
"""

from __future__ import annotations

import io
from typing import Any

import nats
from nats.js.api import ObjectInfo, ObjectStoreConfig
from nats.js.object_store import ObjectStore

from liverank.serving.replication.link import NatsLink


async def bucket(link: NatsLink, name: str) -> ObjectStore:
    """The bucket ``name``, created on first use."""
    cfg = link.config
    try:
        return await link.js.object_store(name)
    except nats.js.errors.BucketNotFoundError:
        ttl = cfg.max_age_s if name == cfg.deltas_bucket else None
        return await link.js.create_object_store(name, config=ObjectStoreConfig(ttl=ttl, replicas=cfg.replicas))


async def put_object(link: NatsLink, bucket_name: str, name: str, data: bytes | io.BufferedIOBase) -> None:
    await (await bucket(link, bucket_name)).put(name, data)


async def get_object(link: NatsLink, bucket_name: str, name: str, into: io.BufferedIOBase | None = None) -> bytes:
    """The object's bytes (or written into ``into``, then b"")."""
    result = await (await link.js.object_store(bucket_name)).get(name, writeinto=into)
    return result.data or b""


async def list_objects(link: NatsLink, bucket_name: str) -> list[ObjectInfo]:
    try:
        store = await link.js.object_store(bucket_name)
        return list(await store.list(ignore_deletes=True))
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
        return []


async def delete_object(link: NatsLink, bucket_name: str, name: str) -> Any:
    return await (await link.js.object_store(bucket_name)).delete(name)
