"""A typed Python client for liverank servers (sync and async, on httpx).

    from liverank.client import Client

    with Client("http://127.0.0.1:8000", token="change-me") as client:
        ranking = client.rank({"user_id": 42, ...}, {"item_id": [11, 12, 13], ...}, k=2)
        print(ranking.items[0].id, ranking.epoch)

``AsyncClient`` has the same methods as coroutines. Errors are ``ClientError``s, under ``LiverankError``: a refusal
by the server (``ServerRejected``) keeps the server's ``code``, ``status`` and ``detail``.
"""

from liverank.client._clients import AsyncClient, Client
from liverank.client.errors import (
    BundleRejected,
    ClientError,
    DeltaRejected,
    GapUnrecoverable,
    ServerRejected,
    ServerUnavailable,
)
from liverank.client.results import Epoch, ModelInfo, PushResult, RankedItem, Ranking, Status

__all__ = [
    "AsyncClient",
    "BundleRejected",
    "Client",
    "ClientError",
    "DeltaRejected",
    "Epoch",
    "GapUnrecoverable",
    "ModelInfo",
    "PushResult",
    "RankedItem",
    "Ranking",
    "ServerRejected",
    "ServerUnavailable",
    "Status",
]
