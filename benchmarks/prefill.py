"""``liverank bench fill``: a server's data directory pre-filled with W-500 rows, before the server starts.

The soak (``python -m liverank.loadtest.soak --prefill-rows N``) runs it on the data directory of the server it is
about to start, so ranking requests name rows that exist from the first second. The ids are those the load test
draws (``liverank.loadtest.payloads``: ordinals ``0 .. n - 1`` per slot, ``benchmarks.w500.ordinal_tables``): the
largest slots (user_id, item_id) get ``--rows`` rows each, every other slot its W-500 cardinality (capped at
``--rows``). The rows go in as ``liverank bench rank`` fills its store (``benchmarks.rank_fill.fill_stores``): the
store opened directly, the bundle's slots declared, its schema hash bound, deltas applied in key order, flushed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from liverank.benchmarks.rank_fill import fill_stores
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.w500 import ordinal_tables
from liverank.errors import LiverankError
from liverank.store.manifest import MANIFEST_FILE, manifest_from_json

STORE_DIR = "store"  # where ``liverank serve --data-dir D`` keeps its LMDB store (Settings.store_path)


class FillRefused(LiverankError):
    """The data directory already holds a store, or the bundle is not a W-500 bundle: nothing was written."""

    code = "invalid_config"


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    bundle: Path = args.bundle
    store_path = data_dir / STORE_DIR
    if store_path.exists():
        raise FillRefused(f"{store_path} exists: fill only a new data directory (the rows would mix)")
    try:
        manifest = manifest_from_json((bundle / MANIFEST_FILE).read_bytes())
    except OSError as exc:
        raise FillRefused(f"cannot read the bundle's manifest: {exc}") from exc
    try:
        tables = ordinal_tables(manifest, args.rows, args.seed)
    except ValueError as exc:  # a slot W-500 does not name
        raise FillRefused(f"{bundle} is not a W-500 bundle: {exc}") from exc
    dim = {config.dim for config in manifest.slots}
    if len(dim) != 1:
        raise FillRefused(f"{bundle}: the fill writes one dimension to every slot, the bundle has {sorted(dim)}")
    log = StepLog(quiet=args.quiet)
    log("fill: %s rows (%s in each largest slot) into %s", f"{tables.n_rows:,}", f"{args.rows:,}", store_path)
    figures = fill_stores(
        store_path, None, manifest, tables, dim.pop(), args.chunk_rows, log, map_size_bytes=args.map_size_bytes
    )
    figures["largest_slot_rows"] = args.rows
    log(
        "fill: %s rows in %.1f s (%.0f rows/s applying)",
        f"{figures['rows']:,}",
        figures["wall_s"],
        figures["liverank_rows_per_s"] or 0.0,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0
