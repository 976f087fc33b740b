"""``liverank snapshot``: copy a store (a running server's too: the writer is not stopped) into a directory, tagged
with every producer's applied seq and the log position it holds (``snapshot.json`` beside ``data.mdb``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from liverank.serving.replication.snapshots import take_snapshot
from liverank.serving.settings import Settings
from liverank.store import EmbeddingStore, StoreError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liverank snapshot", description="Copy a liverank store into a snapshot.")
    p.add_argument("--data-dir", type=Path, required=True, help="the server's data directory (holds store/)")
    p.add_argument("--out", type=Path, required=True, help="a new or empty directory for data.mdb + snapshot.json")
    p.add_argument(
        "--map-size-bytes", type=int, default=Settings.model_fields["map_size_bytes"].default, help="as the server's"
    )
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    store_path = args.data_dir / "store"
    if not (store_path / "data.mdb").is_file():
        print(f"liverank snapshot: no store at {store_path}", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"liverank snapshot: {args.out} is not empty", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(f"copying {store_path} (one read transaction; writers go on) ...", flush=True)
    try:
        with EmbeddingStore.open(store_path, map_size_bytes=args.map_size_bytes, ram_tier=False) as store:
            tags = take_snapshot(store, args.out)
    except StoreError as exc:
        print(f"liverank snapshot: {exc.message}", file=sys.stderr)
        return 1
    size_mb = (args.out / "data.mdb").stat().st_size / 1e6
    print(f"snapshot {args.out}: {size_mb:.1f} MB in {time.perf_counter() - started:.1f} s")
    print(orjson.dumps(tags, option=orjson.OPT_INDENT_2).decode())
    return 0
