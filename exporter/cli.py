"""``liverank export``: build a synthetic bundle, write example inputs for a bundle, or pack a bundle into a tar.gz.

``synthetic`` also writes ``<out>/examples/request.json`` (a ranking request) and ``delta.json`` (a JSON delta for the
bundle's schema), the files the README's quick start sends; ``examples`` writes the same for any bundle.

Exit codes: 0 done, 1 the work failed (e.g. an invalid manifest), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from liverank.exporter.archive import archive_bundle
from liverank.exporter.examples import write_examples
from liverank.exporter.synthetic import PRESETS, build_synthetic_bundle
from liverank.store.manifest import MANIFEST_FILE, manifest_from_json
from liverank.store.slots import MAX_DIM


class _UsageError(Exception):
    """Raised instead of argparse's own ``sys.exit(2)``, so ``main`` returns its exit code."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.format_usage()}{self.prog}: error: {message}")


def _dim(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_DIM:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_DIM}, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {value}")
    return value


def _parser() -> _Parser:
    parser = _Parser(prog="liverank export", description="Build model bundles without torch.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    synthetic = commands.add_parser("synthetic", help="write a synthetic bundle (manifest.json + dense.onnx)")
    synthetic.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    synthetic.add_argument("--preset", choices=PRESETS, default="w500", help="feature set (default w500)")
    synthetic.add_argument("--dim", type=_dim, default=32, help="embedding dim of every slot (default 32)")
    synthetic.add_argument("--version", default="1", help="dense version recorded in the manifest")
    synthetic.add_argument("--seed", type=_seed, default=0, help="weight seed (default 0)")
    examples = commands.add_parser("examples", help="write an example request and delta for a bundle")
    examples.add_argument("--bundle", required=True, type=Path, help="bundle directory (reads its manifest.json)")
    examples.add_argument("--out", type=Path, help="directory to write into (default <bundle>/examples)")
    archive = commands.add_parser("archive", help="pack a bundle directory into a tar.gz")
    archive.add_argument("--bundle", required=True, type=Path, help="bundle directory to pack")
    archive.add_argument("--out", required=True, type=Path, help="archive file to write (.tar.gz)")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command in ("archive", "examples") and not args.bundle.is_dir():
            parser.error(f"--bundle {args.bundle} is not a directory")
        if args.command == "synthetic" and not args.version:
            parser.error("--version must not be empty")
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        if args.command == "synthetic":
            manifest = build_synthetic_bundle(
                args.out, preset=args.preset, dim=args.dim, version=args.version, seed=args.seed
            )
            print(
                f"wrote {args.out}: model {manifest.model} version {manifest.version} "
                f"user_width {manifest.user_width} candidate_width {manifest.candidate_width} "
                f"schema_hash {manifest.schema_hash}"
            )
            _print_written(write_examples(manifest, args.out / "examples"))
        elif args.command == "examples":
            manifest = manifest_from_json((args.bundle / MANIFEST_FILE).read_bytes())
            _print_written(write_examples(manifest, args.out or args.bundle / "examples"))
        else:
            payload = archive_bundle(args.bundle)
            args.out.write_bytes(payload)
            print(f"wrote {args.out}: {len(payload)} bytes")
    except (OSError, ValueError) as exc:
        print(f"liverank export {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_written(paths: list[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")
