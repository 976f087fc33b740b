"""``liverank push``: send delta files or a bundle to a running server.

    liverank push delta FILE [FILE ...] --url URL [--wait-visible]
    liverank push bundle DIR_OR_ARCHIVE --url URL

The admin token comes from ``--token`` or ``LIVERANK_ADMIN_TOKEN``. Exit codes: 0 done, 1 refused or unreachable,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from liverank.exporter.push import PushClient
from liverank.store.format import decode_any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liverank push", description="Push deltas and bundles to a liverank server.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--token", default=None, help="admin token (default: $LIVERANK_ADMIN_TOKEN)")
    commands = parser.add_subparsers(dest="command", required=True)
    delta = commands.add_parser("delta", help="push delta files (binary or JSON form), in the order given")
    delta.add_argument("files", nargs="+", type=Path)
    delta.add_argument("--wait-visible", action="store_true", help="answer once each delta is visible to ranking")
    bundle = commands.add_parser("bundle", help="upload a bundle directory or a .tar.gz archive of one")
    bundle.add_argument("path", type=Path)
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    token = args.token or os.environ.get("LIVERANK_ADMIN_TOKEN")
    try:
        with PushClient(args.url, token) as client:
            if args.command == "delta":
                for path in args.files:
                    result = client.push_delta(decode_any(path.read_bytes()), wait_visible=args.wait_visible)
                    print(f"{path}: {result.status} {result.producer}/{result.seq}")
            else:
                payload = args.path.read_bytes() if args.path.is_file() else args.path
                answer = client.push_bundle(payload)
                print(f"{args.path}: live as {answer['bundle_id']} (version {answer['version']})")
    except OSError as exc:
        print(f"liverank push: {exc}", file=sys.stderr)
        return 1
    return 0
