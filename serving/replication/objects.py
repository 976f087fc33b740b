"""The stream's object store (a JetStream object-store bucket beside the stream): large deltas, bundles."""

from __future__ import annotations

import nats
from nats.js.api import ObjectStoreConfig
from nats.js.object_store import ObjectStore

from liverank.serving.replication.link import NatsLink


async def bucket(link: NatsLink) -> ObjectStore:
    """The bucket, created on first use (kept as long as the stream keeps records)."""
    cfg = link.config
    try:
        return await link.js.object_store(cfg.objects_bucket)
    except nats.js.errors.BucketNotFoundError:
        return await link.js.create_object_store(
            cfg.objects_bucket, config=ObjectStoreConfig(ttl=cfg.max_age_s, replicas=cfg.replicas)
        )


async def put_object(link: NatsLink, name: str, data: bytes) -> None:
    await (await bucket(link)).put(name, data)


async def get_object(link: NatsLink, name: str) -> bytes:
    result = await (await link.js.object_store(link.config.objects_bucket)).get(name)
    return result.data or b""
