"""Every ``LIVERANK_*`` variable is a setting or a named other command's variable; a server refuses the rest.

pydantic-settings ignores environment variables that name no field, so a mistyped setting (or a stale one, like the
Dockerfile's old ``LIVERANK_STORE_PATH``) would be ignored silently. These tests keep the Dockerfile and the code
honest, and check that ``liverank serve`` refuses an unknown variable with one line naming it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from liverank.serving.settings import OTHER_COMMANDS_VARIABLES, Settings, setting_variables, unknown_variables

REPO = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"\bLIVERANK_[A-Z0-9_]*[A-Z0-9]\b")
_SOURCE_DIRS = ("liverank", "store", "serving", "exporter", "trainer", "loadtest", "benchmarks", "scripts", "tests")


def dockerfile_env_names(text: str) -> list[str]:
    """The names every ``ENV`` instruction sets, in both forms (``ENV A=1 B=2`` over continued lines, ``ENV A 1``)."""
    logical = re.sub(r"\\\n", " ", text)  # join continued lines into one instruction
    names: list[str] = []
    for line in logical.splitlines():
        parts = line.split()
        if not parts or parts[0].upper() != "ENV":
            continue
        args = parts[1:]
        if args and "=" not in args[0]:
            names.append(args[0])  # legacy form: ENV NAME value with spaces
        else:
            names += [arg.split("=", 1)[0] for arg in args if "=" in arg]
    return names


def test_dockerfile_env_parser_reads_both_forms() -> None:
    text = "FROM x\nENV A=1 \\\n    LIVERANK_B=2 \\\n    LIVERANK_C=/d\nENV LIVERANK_D some value\nRUN echo ENV=1\n"
    assert dockerfile_env_names(text) == ["A", "LIVERANK_B", "LIVERANK_C", "LIVERANK_D"]


def test_dockerfile_sets_only_real_settings() -> None:
    names = [n for n in dockerfile_env_names((REPO / "Dockerfile").read_text()) if n.startswith("LIVERANK_")]
    assert names, "the Dockerfile sets no LIVERANK_* variable: did the parser miss the ENV form?"
    assert "LIVERANK_DATA_DIR" in names
    not_settings = sorted(set(names) - setting_variables())
    assert not not_settings, f"the Dockerfile sets variables that are no Settings field: {not_settings}"


def test_every_liverank_variable_in_the_code_is_a_setting_or_listed() -> None:
    found: dict[str, str] = {}
    for folder in _SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.resolve() == Path(__file__).resolve():
                continue  # this file names unknown variables on purpose
            for name in _NAME.findall(path.read_text(encoding="utf-8")):
                found.setdefault(name, str(path.relative_to(REPO)))
    unexplained = {n: where for n, where in found.items() if n not in setting_variables() | OTHER_COMMANDS_VARIABLES}
    assert not unexplained, (
        f"LIVERANK_* names read nowhere as settings and not listed as other commands': {unexplained}"
    )
    stale = sorted(OTHER_COMMANDS_VARIABLES - set(found))
    assert not stale, f"OTHER_COMMANDS_VARIABLES lists names no code reads any more: {stale}"


def test_other_commands_variables_do_not_shadow_settings() -> None:
    assert not OTHER_COMMANDS_VARIABLES & setting_variables()


def test_unknown_variables_are_found_case_insensitively() -> None:
    environ = {
        "LIVERANK_PORT": "1",
        "liverank_host": "x",
        "LIVERANK_DELTA_INTERVAL_S": "1",
        "LIVERANK_PROT": "1",
        "liverank_writer": "thread",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == ["LIVERANK_PROT", "liverank_writer"]
    assert "LIVERANK_WRITER" not in setting_variables()
    assert set(Settings.model_fields) == {n.removeprefix("LIVERANK_").lower() for n in setting_variables()}


def test_serve_refuses_an_unknown_variable_with_one_line(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVERANK_")}
    env = {**clean, "LIVERANK_ADMIN_TOKEN": "t", "LIVERANK_STORE_PATH": "/data/store", "LIVERANK_RAM_BUDGET": "9"}
    result = subprocess.run(
        [sys.executable, "-m", "liverank.cli", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "LIVERANK_RAM_BUDGET, LIVERANK_STORE_PATH" in lines[0]
    assert not (tmp_path / "store").exists(), "nothing may be opened before the environment is checked"


def test_rankings_at_once_default_to_the_usable_cores(tmp_path: Path) -> None:
    """A standalone app, and each worker of ``liverank serve``, may rank on every core (the workers share one count
    of rankings at once: ``serving/rank_slots.py``); a set ``rank_concurrency`` wins."""
    cores = len(os.sched_getaffinity(0))
    assert Settings(data_dir=tmp_path).ranking_threads == cores
    assert Settings(data_dir=tmp_path, role="worker", workers=2).ranking_threads == cores
    assert Settings(data_dir=tmp_path, rank_concurrency=3).ranking_threads == 3
