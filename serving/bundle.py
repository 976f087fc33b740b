"""Model bundles on the serving side: read a bundle directory, and unpack an uploaded archive safely.

An archive is untrusted input. It may hold exactly two regular files at its top level, ``manifest.json`` and
``dense.onnx``; anything else (paths, links, devices, extra or repeated members, oversize files) is refused
before a single byte is written. ``tarfile.extractall`` is never used: members are read into memory under
byte limits and written by name.
"""

from __future__ import annotations

import gzip
import io
import logging
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from liverank.serving.errors import BundleArchiveUnsafe, BundleInvalid, BundleTooLarge
from liverank.store import ManifestInvalid
from liverank.store.manifest import BUNDLE_FILES, MANIFEST_FILE, ONNX_FILE, Manifest, manifest_from_json

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
# Tar headers, the end-of-archive blocks and record padding, beyond the members' own bytes.
_TAR_OVERHEAD_BYTES = 64 * 1024
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Bundle:
    """A model bundle read into memory: the validated manifest and the ONNX network's bytes."""

    manifest: Manifest
    onnx_bytes: bytes
    source: Path

    @property
    def version(self) -> str:
        return self.manifest.version


def load_bundle_dir(path: str | Path) -> Bundle:
    """Read and validate the bundle in directory ``path``; ``BundleInvalid`` on any defect."""
    root = Path(path)
    if not root.is_dir():
        raise BundleInvalid(f"bundle directory {root} does not exist or is not a directory")
    manifest_bytes = _read_bundle_file(root, MANIFEST_FILE)
    try:
        manifest = manifest_from_json(manifest_bytes)
    except ManifestInvalid as exc:
        raise BundleInvalid(f"{root / MANIFEST_FILE}: {exc.message}") from exc
    onnx_bytes = _read_bundle_file(root, ONNX_FILE)
    if not onnx_bytes:
        raise BundleInvalid(f"{root / ONNX_FILE} is empty")
    logger.info(
        "read bundle %s: model %s version %s, %d onnx bytes",
        root,
        manifest.model,
        manifest.version,
        len(onnx_bytes),
    )
    return Bundle(manifest=manifest, onnx_bytes=onnx_bytes, source=root)


def _read_bundle_file(root: Path, name: str) -> bytes:
    path = root / name
    if not path.is_file():
        raise BundleInvalid(f"bundle {root} has no {name} (a bundle needs {MANIFEST_FILE} and {ONNX_FILE})")
    return path.read_bytes()


def extract_bundle_archive(
    payload: bytes, dest_dir: str | Path, *, max_total_bytes: int, max_member_bytes: int
) -> Path:
    """Unpack a bundle archive (tar or tar.gz) into ``dest_dir``, which must not exist yet.

    Raises ``BundleArchiveUnsafe`` for anything but the two bundle files as regular top-level members,
    ``BundleTooLarge`` past a limit, ``BundleInvalid`` for an unreadable archive or a missing file. Nothing is
    written unless the whole archive passes.
    """
    dest = Path(dest_dir)
    if dest.exists():
        raise FileExistsError(f"extraction directory {dest} already exists; bundles unpack into a fresh one")
    files = _read_members(payload, max_total_bytes=max_total_bytes, max_member_bytes=max_member_bytes)
    missing = [name for name in BUNDLE_FILES if name not in files]
    if missing:
        raise BundleInvalid(f"bundle archive lacks {' and '.join(missing)}")
    dest.mkdir(parents=True, mode=0o700)
    for name, data in files.items():
        # "xb": never follows or replaces anything already at the path.
        with open(dest / name, "xb") as f:
            f.write(data)
    logger.info("extracted bundle archive (%d bytes) into %s", len(payload), dest)
    return dest


def _read_members(payload: bytes, *, max_total_bytes: int, max_member_bytes: int) -> dict[str, bytes]:
    raw: io.BufferedIOBase = io.BytesIO(payload)
    if payload[:2] == _GZIP_MAGIC:
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    # The whole decompressed stream is capped, so a gzip bomb (or a huge pax header, which tarfile reads
    # into memory) stops at the limit instead of filling memory.
    stream = _CappedReader(raw, max_total_bytes + _TAR_OVERHEAD_BYTES)
    files: dict[str, bytes] = {}
    total_bytes = 0
    try:
        # "r|": a forward-only stream; no seeking back, so the cap above sees every byte tarfile reads.
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _check_member(member, files, max_member_bytes=max_member_bytes)
                total_bytes += member.size
                if total_bytes > max_total_bytes:
                    raise BundleTooLarge(f"bundle archive holds more than {max_total_bytes} bytes")
                files[member.name] = _read_member(tar, member, max_member_bytes)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleInvalid(f"bundle archive is not a readable tar or tar.gz: {exc}") from exc
    return files


def _check_member(member: tarfile.TarInfo, seen: dict[str, bytes], *, max_member_bytes: int) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise BundleArchiveUnsafe(f"bundle archive member {name!r} has an absolute path")
    if ".." in parts or "\\" in name:
        raise BundleArchiveUnsafe(f"bundle archive member {name!r} leaves the bundle directory")
    if member.issym() or member.islnk():
        raise BundleArchiveUnsafe(f"bundle archive member {name!r} is a link; only regular files are accepted")
    if not member.isreg() or member.issparse():
        raise BundleArchiveUnsafe(f"bundle archive member {name!r} is not a regular file")
    if name not in BUNDLE_FILES:
        raise BundleArchiveUnsafe(
            f"bundle archive member {name!r} is not allowed: the archive must hold exactly {MANIFEST_FILE} and "
            f"{ONNX_FILE} at its top level (tar -czf bundle.tar.gz -C DIR {MANIFEST_FILE} {ONNX_FILE})"
        )
    if name in seen:
        raise BundleArchiveUnsafe(f"bundle archive holds {name!r} twice")
    if member.size > max_member_bytes:
        raise BundleTooLarge(f"bundle archive member {name!r} is {member.size} bytes, above {max_member_bytes}")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, max_member_bytes: int) -> bytes:
    source = tar.extractfile(member)
    if source is None:
        raise BundleArchiveUnsafe(f"bundle archive member {member.name!r} has no file data")
    chunks: list[bytes] = []
    read_bytes = 0
    # Count what is actually read rather than trusting the header's size.
    while chunk := source.read(_CHUNK_BYTES):
        read_bytes += len(chunk)
        if read_bytes > max_member_bytes:
            raise BundleTooLarge(f"bundle archive member {member.name!r} is above {max_member_bytes} bytes")
        chunks.append(chunk)
    if read_bytes != member.size:
        raise BundleInvalid(f"bundle archive member {member.name!r} is truncated: {read_bytes} of {member.size} bytes")
    return b"".join(chunks)


class _CappedReader(io.RawIOBase):
    """A forward-only reader that raises ``BundleTooLarge`` once more than ``limit_bytes`` were read."""

    def __init__(self, source: io.BufferedIOBase, limit_bytes: int) -> None:
        super().__init__()
        self._source = source
        self._limit_bytes = limit_bytes
        self._read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        # Never ask for more than one byte past the limit: that byte is enough to know the limit was passed.
        room = self._limit_bytes + 1 - self._read_bytes
        data = self._source.read(room if size < 0 else min(size, room))
        self._read_bytes += len(data)
        if self._read_bytes > self._limit_bytes:
            raise BundleTooLarge(f"bundle archive unpacks to more than {self._limit_bytes} bytes")
        return data
