"""``liverank serve``: run the ranking server: N worker processes on one port, one writer process
(``serving/server.py``).

Settings come from ``LIVERANK_*`` environment variables; flags override them (and are passed to the workers through
the environment). The store and the live bundle are opened before any worker starts, so a bad store directory or a
broken bundle ends the command with one clear line and a non-zero exit code instead of a traceback (the ``liverank``
dispatcher prints the ``LiverankError``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from liverank.serving.errors import ConfigInvalid
from liverank.serving.server import prepare_server, run_server
from liverank.serving.services import check_settings
from liverank.serving.settings import ENV_PREFIX, Settings, unknown_variables

log = logging.getLogger("liverank.serve")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liverank serve", description="Run the liverank ranking server.")
    p.add_argument("--data-dir", type=Path, help="directory holding store/ and bundles/ (LIVERANK_DATA_DIR)")
    p.add_argument("--bundle", type=Path, help="bundle directory to make live if none is live yet (LIVERANK_BUNDLE)")
    p.add_argument("--host", help="address to listen on (LIVERANK_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (LIVERANK_PORT, default 8000)")
    p.add_argument(
        "--open-admin", action="store_true", default=None, help="no admin token, allowed on loopback hosts only"
    )
    p.add_argument("--durability", choices=["process", "power"], help="LIVERANK_DURABILITY (default process)")
    p.add_argument("--map-size-bytes", type=int, help="LMDB map size (LIVERANK_MAP_SIZE_BYTES)")
    p.add_argument("--ram-budget-rows", type=int, help="rows kept in the RAM tier (LIVERANK_RAM_BUDGET_ROWS)")
    p.add_argument("--onnx-threads", type=int, help="intra-op threads per ONNX session (LIVERANK_ONNX_THREADS)")
    p.add_argument("--workers", type=int, help="worker processes (LIVERANK_WORKERS, default: the usable cores)")
    p.add_argument(
        "--shared-tier-dir", type=Path, help="where the shared RAM tier lives (LIVERANK_SHARED_TIER_DIR, /dev/shm)"
    )
    p.add_argument(
        "--log", help="replicated mode: the shared delta log, nats://host:port[,...] (LIVERANK_LOG; README, Replicas)"
    )
    p.add_argument("--stream", help="the log's JetStream stream name (LIVERANK_STREAM, default liverank)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {key: value for key, value in vars(args).items() if key != "log_level" and value is not None}
    unknown = unknown_variables(os.environ)
    if unknown:  # pydantic-settings would ignore them: a mistyped setting must not pass silently
        raise ConfigInvalid(
            f"unknown {ENV_PREFIX}* environment variables: {', '.join(unknown)} (not settings: see the configuration "
            f"table in README.md)"
        )
    try:
        settings = Settings(**overrides)
        check_settings(settings)
        prepare_server(settings)
    except ValidationError as exc:
        print(f"liverank serve: invalid settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"liverank serve: cannot start: {exc}", file=sys.stderr)
        return 1
    # The workers read their settings from the environment: flags become LIVERANK_* variables for them.
    for key, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return run_server(settings, args.log_level)
    except KeyboardInterrupt:  # uvicorn shuts down cleanly on SIGINT, then re-raises it: nothing left to report
        return 130
