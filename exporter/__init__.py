"""liverank's exporter: bundles (synthetic, or exported from a PyTorch tower), sparse deltas, and the push client.

The public surface is what this module exports (lazily, PEP 562: the push client and the delta builder never load
torch or ONNX; only ``export_bundle``, ``export_onnx`` and ``check_parity`` do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from liverank._exports import lazy_exports

if TYPE_CHECKING:
    from liverank.exporter.archive import archive_bundle, write_bundle
    from liverank.exporter.deltas import DeltaBuilder, snapshot_deltas
    from liverank.exporter.onnx_export import ExportParityError, check_parity, export_bundle, export_onnx
    from liverank.exporter.push import (
        BundleRejected,
        DeltaRejected,
        GapUnrecoverable,
        PushClient,
        PushError,
        PushResult,
        ServerUnavailable,
    )
    from liverank.exporter.synthetic import build_synthetic_bundle, synthetic_manifest

_HOMES: dict[str, tuple[str, ...]] = {
    "liverank.exporter.archive": (
        "archive_bundle",
        "write_bundle",
    ),
    "liverank.exporter.deltas": (
        "DeltaBuilder",
        "snapshot_deltas",
    ),
    "liverank.exporter.onnx_export": (
        "ExportParityError",
        "check_parity",
        "export_bundle",
        "export_onnx",
    ),
    "liverank.exporter.push": (
        "BundleRejected",
        "DeltaRejected",
        "GapUnrecoverable",
        "PushClient",
        "PushError",
        "PushResult",
        "ServerUnavailable",
    ),
    "liverank.exporter.synthetic": (
        "build_synthetic_bundle",
        "synthetic_manifest",
    ),
}
__getattr__ = lazy_exports(__name__, _HOMES)

__all__ = [
    "BundleRejected",
    "DeltaBuilder",
    "DeltaRejected",
    "ExportParityError",
    "GapUnrecoverable",
    "PushClient",
    "PushError",
    "PushResult",
    "ServerUnavailable",
    "archive_bundle",
    "build_synthetic_bundle",
    "check_parity",
    "export_bundle",
    "export_onnx",
    "snapshot_deltas",
    "synthetic_manifest",
    "write_bundle",
]
