"""liverank's serving core: settings, the long-lived services, ranking, bundles and the serving errors.

The public surface is what this module exports (lazily, PEP 562: importing one name does not load ONNX Runtime or
LMDB). The HTTP shell (``liverank.serving.api``) and the ``liverank serve`` command (``liverank.serving.cli``) are
not re-exported: the core is HTTP-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from liverank._exports import lazy_exports

if TYPE_CHECKING:
    from liverank.serving.errors import (
        BodyTooLarge,
        BundleArchiveUnsafe,
        BundleIncompatible,
        BundleInvalid,
        BundleTooLarge,
        ConfigInvalid,
        EmptyCandidates,
        InvalidJson,
        LimitExceeded,
        MissingFeature,
        NoBundle,
        NoPreviousBundle,
        RaggedColumns,
        RequestInvalid,
        ServingError,
        UnknownFeature,
        UnknownHead,
        WaitTimeout,
        WrongType,
    )
    from liverank.serving.model_slot import LiveModel, ModelSlot
    from liverank.serving.ranker import Ranker, RankResult
    from liverank.serving.request import Limits, RankRequest, parse_rank_request
    from liverank.serving.runner import OnnxRunner
    from liverank.serving.services import DeltaReceipt, Services, check_settings
    from liverank.serving.settings import Settings, unknown_variables

_HOMES: dict[str, tuple[str, ...]] = {
    "liverank.serving.errors": (
        "BodyTooLarge",
        "BundleArchiveUnsafe",
        "BundleIncompatible",
        "BundleInvalid",
        "BundleTooLarge",
        "ConfigInvalid",
        "EmptyCandidates",
        "InvalidJson",
        "LimitExceeded",
        "MissingFeature",
        "NoBundle",
        "NoPreviousBundle",
        "RaggedColumns",
        "RequestInvalid",
        "ServingError",
        "UnknownFeature",
        "UnknownHead",
        "WaitTimeout",
        "WrongType",
    ),
    "liverank.serving.model_slot": (
        "LiveModel",
        "ModelSlot",
    ),
    "liverank.serving.ranker": (
        "RankResult",
        "Ranker",
    ),
    "liverank.serving.request": (
        "Limits",
        "RankRequest",
        "parse_rank_request",
    ),
    "liverank.serving.runner": ("OnnxRunner",),
    "liverank.serving.services": (
        "DeltaReceipt",
        "Services",
        "check_settings",
    ),
    "liverank.serving.settings": (
        "Settings",
        "unknown_variables",
    ),
}
__getattr__ = lazy_exports(__name__, _HOMES)

__all__ = [
    "BodyTooLarge",
    "BundleArchiveUnsafe",
    "BundleIncompatible",
    "BundleInvalid",
    "BundleTooLarge",
    "ConfigInvalid",
    "DeltaReceipt",
    "EmptyCandidates",
    "InvalidJson",
    "LimitExceeded",
    "Limits",
    "LiveModel",
    "MissingFeature",
    "ModelSlot",
    "NoBundle",
    "NoPreviousBundle",
    "OnnxRunner",
    "RaggedColumns",
    "RankRequest",
    "RankResult",
    "Ranker",
    "RequestInvalid",
    "Services",
    "ServingError",
    "Settings",
    "UnknownFeature",
    "UnknownHead",
    "WaitTimeout",
    "WrongType",
    "check_settings",
    "parse_rank_request",
    "unknown_variables",
]
