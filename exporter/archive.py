"""A bundle's two on-disk forms: the directory (``manifest.json`` + ``dense.onnx``) and its tar.gz archive.

The archive holds exactly those two regular files at its top level, nothing else: serving refuses any other
member. It is reproducible: the same bundle gives the same bytes (fixed owner, mode, mtime and gzip header).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile
from pathlib import Path

import orjson

from liverank.store.manifest import MANIFEST_FILE, ONNX_FILE, Manifest, manifest_from_json, manifest_to_json

logger = logging.getLogger(__name__)


def write_bundle(out_dir: str | Path, manifest: Manifest, onnx_bytes: bytes) -> Path:
    """Write ``dense.onnx`` then ``manifest.json`` into ``out_dir`` (created if missing), each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes last: a reader that finds it also finds the network it describes.
    _write_atomic(out / ONNX_FILE, onnx_bytes)
    _write_atomic(out / MANIFEST_FILE, orjson.dumps(manifest_to_json(manifest), option=orjson.OPT_INDENT_2))
    return out


def archive_bundle(bundle_dir: str | Path) -> bytes:
    """The tar.gz of a bundle directory. Refuses (``ManifestInvalid``) a bundle whose manifest is invalid."""
    root = Path(bundle_dir)
    manifest_bytes = _read_file(root / MANIFEST_FILE)
    manifest = manifest_from_json(manifest_bytes)
    onnx_bytes = _read_file(root / ONNX_FILE)
    if not onnx_bytes:
        raise ValueError(f"{root / ONNX_FILE} is empty")
    buffer = io.BytesIO()
    mtime_s = manifest.created_at_ms // 1000
    with (
        gzip.GzipFile(filename="", fileobj=buffer, mode="wb", mtime=mtime_s) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name, data in ((MANIFEST_FILE, manifest_bytes), (ONNX_FILE, onnx_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = mtime_s
            tar.addfile(info, io.BytesIO(data))
    payload = buffer.getvalue()
    logger.info("archived bundle %s (version %s): %d bytes", root, manifest.version, len(payload))
    return payload


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"bundle file {path} is missing (a bundle needs {MANIFEST_FILE} and {ONNX_FILE})")
    return path.read_bytes()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
