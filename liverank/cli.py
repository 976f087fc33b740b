"""The ``liverank`` command: a thin dispatcher.

Each subcommand lives in its own package and is imported only when it runs (by name, through importlib), so
``liverank serve`` never loads torch and ``liverank export`` never loads the serving stack. A subcommand module
exposes ``main(argv: list[str]) -> int`` and lets the ``LiverankError`` it cannot recover from propagate: the
dispatcher prints it as one line on stderr and exits non-zero.
"""

from __future__ import annotations

import importlib
import sys

from liverank.errors import LiverankError

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


# Exit codes by error code, as serving/api maps codes to HTTP statuses: 2 for what the user must change in how the
# command is called, 1 for every other refusal or failure.
EXIT_CODE_BY_CODE: dict[str, int] = {"invalid_config": 2}


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
    try:
        code: int = module.main(rest)
    except LiverankError as exc:  # every subcommand's refusals end here: one line, no traceback
        print(f"liverank {name}: {exc.message}", file=sys.stderr)
        return EXIT_CODE_BY_CODE.get(exc.code, 1)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
