"""The ``liverank`` command: a thin dispatcher.

Each subcommand lives in its own package and is imported only when it runs (by name, through importlib), so
``liverank serve`` never loads torch and ``liverank export`` never loads the serving stack. A subcommand module
exposes ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("liverank.serving.cli", "run the ranking server"),
    "bench": ("liverank.benchmarks.cli", "run a benchmark (store, rank) and write JSON results"),
    "export": ("liverank.exporter.cli", "build bundles and deltas (e.g. a synthetic bundle, no torch needed)"),
    "push": ("liverank.exporter.push_cli", "push delta files or a bundle to a running server"),
    "demo": ("liverank.trainer.demo", "the live loop: a learning model served fresh vs frozen, with a dashboard"),
    "snapshot": ("liverank.serving.replication.snapshot_cli", "copy a store (a running server's too) into a snapshot"),
    "cluster": ("liverank.trainer.cluster", "replicated mode on loopback: NATS JetStream cluster + 3 replicas"),
    "replay": (
        "liverank.trainer.replay",
        "replay a data set in time order through live servers (Monolith's sync experiment)",
    ),
}


def usage() -> str:
    lines = ["usage: liverank <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "run `liverank <command> --help` for a command's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"liverank: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"liverank {name}: not available in this install ({exc.name} is missing)", file=sys.stderr)
        return 2
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
