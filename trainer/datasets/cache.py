"""Getting MovieLens-100K onto this machine: from the RecBole 1.2.1 wheel on PyPI, into a local cache.

RecBole's wheel ships ``recbole/dataset_example/ml-100k/ml-100k.inter`` (MovieLens-100K in RecBole's atomic-file
form). ``fetch_movielens_100k`` runs ``pip download recbole==1.2.1 --no-deps`` into the cache (PyPI is the only
source the project relies on), checks the wheel's and the file's sha256, and extracts that one member with
``zipfile``: nothing is installed, nothing is imported from the wheel. The cache is ``~/.cache/liverank/datasets``,
or ``$LIVERANK_DATASETS_DIR``, or the ``cache_dir`` given. Data sets are never committed to the repository.

Where the data cannot be had (no network, no pip, a changed wheel), ``DatasetUnavailable`` says why and what to
do instead; callers (the replay command, the tests) turn it into a clear message or a skip.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from liverank.errors import LiverankError

log = logging.getLogger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
ML100K_FILE = "ml-100k/ml-100k.inter"
DEFAULT_PIP_TIMEOUT_S = 300.0


class DatasetUnavailable(LiverankError):
    """A data set cannot be obtained here; the message says why and how else to get it."""

    code = "dataset_unavailable"


class DatasetFormatInvalid(LiverankError, ValueError):
    """A data file that is not in the reader's format, or a malformed line; the message names the file and line.

    Also a ``ValueError``: the readers raise it where a value fails to parse, and callers that only know the
    standard library can still catch it as one.
    """

    code = "dataset_format_invalid"


def cache_dir(override: str | Path | None = None) -> Path:
    """Where data sets are kept: ``override``, else ``$LIVERANK_DATASETS_DIR``, else ``~/.cache/liverank/datasets``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("LIVERANK_DATASETS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "liverank" / "datasets"


def cached_movielens_100k(directory: str | Path | None = None) -> Path | None:
    """The extracted ``ml-100k.inter`` if it is already in the cache (and intact), else None. Never downloads."""
    path = cache_dir(directory) / ML100K_FILE
    return path if path.is_file() and _sha256(path) == ML100K_SHA256 else None


def fetch_movielens_100k(directory: str | Path | None = None, *, timeout_s: float = DEFAULT_PIP_TIMEOUT_S) -> Path:
    """The path of ``ml-100k.inter`` in the cache, downloading RecBole's wheel with pip first if needed."""
    root = cache_dir(directory)
    found = cached_movielens_100k(root)
    if found is not None:
        return found
    wheel = root / "wheels" / RECBOLE_WHEEL
    if not wheel.is_file():
        _pip_download(root / "wheels", timeout_s)
    if _sha256(wheel) != RECBOLE_WHEEL_SHA256:
        raise DatasetUnavailable(
            f"{wheel} is not the RecBole 1.2.1 wheel this code knows (sha256 differs); delete it and retry"
        )
    return extract_member(wheel, ML100K_MEMBER, root / ML100K_FILE, sha256=ML100K_SHA256)


def extract_member(wheel: Path, member: str, dest: Path, *, sha256: str | None = None) -> Path:
    """Copy one member of a wheel (a zip) to ``dest``, atomically; checks its sha256 when given."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DatasetUnavailable(f"cannot read {member} from {wheel}: {exc}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DatasetUnavailable(f"{member} in {wheel} is not the expected file (sha256 differs)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(data)
    partial.replace(dest)
    log.info("extracted %s (%d bytes) to %s", member, len(data), dest)
    return dest


def _pip_download(dest: Path, timeout_s: float) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        RECBOLE_REQUIREMENT,
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        "--disable-pip-version-check",
        "--quiet",
    ]
    hint = (
        f"MovieLens-100K comes from the {RECBOLE_REQUIREMENT} wheel on PyPI; run "
        f"`pip download {RECBOLE_REQUIREMENT} --no-deps -d {dest}` where PyPI is reachable, "
        "or pass your own copy with --data FILE --format movielens"
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetUnavailable(f"pip download failed ({exc}). {hint}") from exc
    if done.returncode != 0 or not (dest / RECBOLE_WHEEL).is_file():
        problem = (done.stderr or done.stdout).strip().splitlines()
        raise DatasetUnavailable(f"pip download failed: {problem[-1] if problem else done.returncode}. {hint}")
    log.info("downloaded %s to %s", RECBOLE_WHEEL, dest)


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
