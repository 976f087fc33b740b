"""The built artefact, as a user gets it: the wheel, installed non-editable into a fresh venv, run from outside the
repository.

``make test`` itself runs from an editable install with the repository on ``sys.path``, which hides a wheel that
forgets a subpackage or a data file, or that installs a top-level name beside ``liverank`` (``store``, ``trainer``,
... clash with other PyPI packages). So this module builds the wheel from a copy of the tree (the real build: pip,
build isolation, the C kernel compiled), installs it with the ``train`` extra (torch comes from constraints.txt,
the CPU build on disk) into a new venv without the repository on its path, and checks:

- what it installs: exactly ``liverank/``, its dist-info and the ``liverank`` console script (read off RECORD);
- every package of the tree but the benchmarks, every data file of the package tree (``py.typed``, the kernel's
  source and stub, the status page's assets) and
  the compiled kernel;
- that the bare names (``import store``) and ``liverank.benchmarks`` do not import;
- ``liverank --help``, ``liverank export synthetic``, ``liverank serve`` ranking one request over HTTP and
  ``liverank replay --dataset synthetic-movielens``, all from a directory outside the repository.

Slow (a venv with torch: about a minute of pip on 2 cores), but it runs in ``make test``.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from liverank.server_process import ServerProcess, serve_command

# The first test carries the fixture's build and pip install: minutes on a loaded machine, not pytest's 600 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
BARE_NAMES = ("store", "serving", "exporter", "trainer", "loadtest", "benchmarks")
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", "results", ".*_cache", ".hypothesis", "tests"
)
_PIP_TIMEOUT_S = 1800
_RUN_TIMEOUT_S = 600


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    outside: Path  # a working directory outside the repository
    env: dict[str, str]  # no PYTHONPATH: only what the venv installed is importable

    @property
    def liverank(self) -> Path:
        return self.venv / "bin" / "liverank"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.outside,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=_RUN_TIMEOUT_S,
            check=False,
        )


def _pip(python: Path | str, *args: str | Path, env: dict[str, str]) -> None:
    command = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # Build from a copy: the build writes build/ and *.egg-info, and the source tree may be in use by other runs.
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    wheelhouse = root / "wheelhouse"
    _pip(sys.executable, "wheel", "--no-deps", "-w", wheelhouse, source, env=clean_env)
    (wheel,) = wheelhouse.glob("liverank-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env, timeout=_RUN_TIMEOUT_S)
    python = venv / "bin" / "python"
    _pip(python, "install", "-c", REPO_ROOT / "constraints.txt", f"{wheel}[train]", env=clean_env)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env,
    ).stdout.strip()
    outside = root / "elsewhere"
    outside.mkdir()
    env = {**clean_env, "PATH": f"{venv / 'bin'}{os.pathsep}{clean_env.get('PATH', '')}"}
    env = {k: v for k, v in env.items() if not k.startswith("LIVERANK_")}
    return Installed(wheel, venv, Path(site), outside, env)


def _record(installed: Installed) -> list[str]:
    (dist_info,) = installed.site_packages.glob("liverank-*.dist-info")
    with open(dist_info / "RECORD", newline="") as f:
        return [row[0] for row in csv.reader(f) if row]


def _tree_packages() -> set[str]:
    """The repository's packages under ``liverank`` (symlinked folders followed), the benchmarks left out."""
    found = set()
    for folder, dirs, files in os.walk(REPO_ROOT / "liverank", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            found.add(".".join(Path(folder).relative_to(REPO_ROOT).parts))
    return {p for p in found if p != "liverank.benchmarks" and not p.startswith("liverank.benchmarks.")}


def _tree_data_files() -> set[str]:
    """Files of the package tree that are not Python modules (the kernel's source and stub, ``py.typed``, the status
    page's assets), as wheel paths; the benchmarks and build products left out."""
    found = set()
    for folder, dirs, files in os.walk(REPO_ROOT / "liverank", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        relative = Path(folder).relative_to(REPO_ROOT)
        if relative.parts[:2] == ("liverank", "benchmarks"):
            continue
        found |= {(relative / f).as_posix() for f in files if not f.endswith((".py", ".so", ".pyc"))}
    return found


def test_the_wheel_installs_liverank_and_nothing_beside_it(installed: Installed) -> None:
    record = _record(installed)
    scripts = {Path(path).name for path in record if path.startswith("../")}
    top_level = {Path(path).parts[0] for path in record if not path.startswith("../")}
    assert top_level == {"liverank", "liverank-0.1.0.dist-info"}
    assert scripts == {"liverank"}
    assert (installed.venv / "bin" / "liverank").exists()
    dist_info = installed.site_packages / "liverank-0.1.0.dist-info"
    assert (dist_info / "top_level.txt").read_text().split() == ["liverank"]


def test_every_package_of_the_tree_but_the_benchmarks_is_in_the_wheel(installed: Installed) -> None:
    record = _record(installed)
    in_wheel = {".".join(Path(p).parent.parts) for p in record if Path(p).name == "__init__.py"}
    expected = _tree_packages()
    assert "liverank.trainer.datasets" in expected  # the subpackage the hand-made list once forgot
    assert in_wheel == expected
    assert not any(p.startswith("liverank/benchmarks/") for p in record)


@pytest.mark.parametrize("extension", ["liverank/store/_kernel", "liverank/serving/_rank_body"])
def test_the_package_data_and_the_compiled_extensions_are_in_the_wheel(installed: Installed, extension: str) -> None:
    record = set(_record(installed))
    data = _tree_data_files()
    assert {"liverank/py.typed", f"{extension}.c", f"{extension}.pyi"} <= data
    assert any(p.startswith("liverank/serving/api/static/") for p in data)
    assert data - record == set()  # every data file of the tree is installed
    assert any(p.startswith(f"{extension}.") and p.endswith(".so") for p in record)
    module = extension.replace("/", ".")
    loaded = installed.run(installed.python, "-c", f"import {module} as k; print(k.__file__)")
    assert loaded.returncode == 0, loaded.stderr
    assert Path(loaded.stdout.strip()).is_relative_to(installed.site_packages)


def test_only_the_liverank_namespace_imports(installed: Installed) -> None:
    names = (*BARE_NAMES, "liverank.benchmarks")
    probe = (
        "import importlib.util, liverank; "
        f"print(liverank.__file__); print([n for n in {names!r} if importlib.util.find_spec(n) is not None])"
    )
    found = installed.run(installed.python, "-c", probe)
    assert found.returncode == 0, found.stderr
    where, importable = found.stdout.strip().splitlines()
    assert Path(where).is_relative_to(installed.site_packages)
    assert importable == "[]"
    bare = installed.run(installed.python, "-c", "import store")
    assert bare.returncode != 0
    assert "No module named 'store'" in bare.stderr


def test_the_installed_command_exports_serves_and_ranks(installed: Installed) -> None:
    helped = installed.run(installed.liverank, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout
    assert "replay" in helped.stdout
    bundle = installed.outside / "bundle"
    exported = installed.run(
        installed.liverank, "export", "synthetic", "--out", bundle, "--preset", "tiny", "--dim", "8"
    )
    assert exported.returncode == 0, exported.stderr
    assert (bundle / "manifest.json").exists()
    server = ServerProcess(
        serve_command(installed.outside / "data", bundle, launcher=[str(installed.liverank)]),
        log_path=installed.outside / "serve.log",
        env={**installed.env, "LIVERANK_ADMIN_TOKEN": "wheel-test-token"},
        cwd=installed.outside,
    )
    with server.start(), server.client() as client:
        body = {
            "user": {"user_id": 7, "hist_item_ids": [1, 2, 3]},
            "candidates": {"item_id": [10, 11, 12, 13], "author_id": [1, 2, 1, 3], "tags": [[1], [], [2, 3], [4]]},
            "k": 2,
        }
        answer = client.post("/v1/rank", json=body)
        assert answer.status_code == 200, answer.text
        items = answer.json()["items"]
        assert len(items) == 2
        assert {item["id"] for item in items} <= {10, 11, 12, 13}
        status_page = client.get("/status")  # served from the package's static files
        assert status_page.status_code == 200, status_page.text[:200]
    assert server.proc is not None
    assert server.proc.returncode is not None


def test_the_installed_command_replays_a_synthetic_data_set(installed: Installed) -> None:
    out = installed.outside / "replay"
    replayed = installed.run(
        installed.liverank,
        "replay",
        "--dataset",
        "synthetic-movielens",
        "--synthetic-events",
        "3000",
        "--shards",
        "2",
        "--seeds",
        "1",
        "--out",
        out,
        "--cache-dir",
        installed.outside / "cache",
    )
    assert replayed.returncode == 0, f"{replayed.stdout}\n{replayed.stderr}"
    assert (out / "replay.json").exists()
