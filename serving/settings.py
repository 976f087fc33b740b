"""Server settings, read from ``LIVERANK_*`` environment variables (or passed in by the CLI and tests).

pydantic-settings ignores environment variables that name no field, so a typo in a setting would be ignored
silently; ``liverank serve`` refuses them instead (``unknown_variables``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from liverank.store.shared_tier import default_dir

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
ENV_PREFIX = "LIVERANK_"

# ``LIVERANK_*`` variables that other commands read; they are not server settings, yet may sit in a server's
# environment because the command that reads them also starts servers that inherit its environment. Every other
# ``LIVERANK_*`` variable must name a ``Settings`` field (tests/serving/test_settings.py keeps this list complete).
OTHER_COMMANDS_VARIABLES = frozenset(
    {
        # the load test's knobs (loadtest/locustfile.py, shapes.py, run.py, soak.py: they start the server too)
        "LIVERANK_BUNDLE_ARCHIVE",
        "LIVERANK_CANDIDATES",
        "LIVERANK_DELTA_INTERVAL_S",
        "LIVERANK_DELTA_ROWS",
        "LIVERANK_DELTA_STREAM",
        "LIVERANK_DELTA_USERS",
        "LIVERANK_K",
        "LIVERANK_LARGEST_IDS",
        "LIVERANK_POOL_SIZE",
        "LIVERANK_PROBE_INTERVAL_S",
        "LIVERANK_PRODUCER",
        "LIVERANK_RANK_RPS_PER_USER",
        "LIVERANK_SEED",
        "LIVERANK_SHAPE",
        "LIVERANK_STEPS",
        "LIVERANK_SWAP_INTERVAL_S",
        "LIVERANK_TIMELINE_JSON",
        "LIVERANK_VISIBLE_TIMEOUT_S",
        # where `liverank replay` caches data sets (it starts its servers with its own environment)
        "LIVERANK_DATASETS_DIR",
        # trial counts of the long tests (tests start servers, some with the environment pytest runs in)
        "LIVERANK_CRASH_TRIALS",
        "LIVERANK_KILL9_TRIALS",
        "LIVERANK_SWAP_TRIALS",
        # the shared tier's test-only seams: the writer stalls mid-publish, or in a window of a slot's growth, so a
        # test can SIGKILL it there
        "LIVERANK_TIER_TEST_STALL_AT_GENERATION",
        "LIVERANK_TIER_TEST_STALL_IN_GROWTH",
        # ... and the writer's LMDB thread writes nothing while a file exists (deltas stay visible-only)
        "LIVERANK_TIER_TEST_HOLD_LMDB",
    }
)


class Settings(BaseSettings):
    """Everything ``liverank serve`` can be told. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="LIVERANK_", extra="forbid")

    data_dir: Path = Field(Path("liverank-data"), description="holds store/ (LMDB) and bundles/")
    bundle: Path | None = Field(None, description="a bundle directory to go live at start-up if none is live yet")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    admin_token: SecretStr | None = Field(None, description="bearer token for /admin/*")
    open_admin: bool = Field(False, description="run /admin/* without a token; allowed only on a loopback host")

    map_size_bytes: int = Field(64 * 1024**3, ge=1 << 20, description="LMDB map size, fixed at open")
    durability: Literal["process", "power"] = "process"
    ram_budget_rows: int = Field(50_000_000, ge=0)
    flush_interval_s: float = Field(1.0, gt=0, description="how often committed data is fsynced (durability=process)")
    sweep_interval_s: float = Field(30.0, gt=0)
    inbox_max_depth: int = Field(1_000, ge=1)
    writer_lmdb_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="nice value of the writer's thread that writes deltas into LMDB after they became visible "
        "(higher: ranking keeps more of the CPU while deltas are written)",
    )
    updater_poll_s: float = Field(
        0.002,
        gt=0,
        description="idle wait between changelog checks (follower), and between inbox checks of a writer without "
        "the inbox doorbell (store/doorbell.py: normally a queued delta wakes the writer)",
    )
    switch_interval_s: float = Field(
        0.001, gt=0, description="sys.setswitchinterval: how long a thread may hold the GIL while others wait"
    )

    # Replicated mode (README, "Replicas"): without ``log`` the server runs alone on its embedded LMDB inbox.
    log: str | None = Field(
        None,
        pattern=r"^nats://[^,\s]+(,nats://[^,\s]+)*$",
        description="the shared delta log: NATS JetStream server URLs, comma-separated (nats://host:port[,...])",
    )
    stream: str = Field("liverank", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the JetStream stream's name")
    stream_replicas: int = Field(1, ge=1, le=5, description="copies of the stream kept by the NATS cluster")
    stream_max_age_s: float = Field(24 * 3600.0, gt=0, description="the stream drops records older than this")
    stream_max_bytes: int | None = Field(None, ge=1 << 20, description="the stream drops its oldest records past this")
    log_max_lag_records: int = Field(
        100, ge=0, description="a replica reports ready only once it is at most this many log records behind"
    )
    snapshot_interval_s: float = Field(
        3600.0, ge=0, description="how often a replica publishes a snapshot of its store for bootstrapping (0: never)"
    )
    log_timeout_s: float = Field(5.0, gt=0, description="how long a push waits for the log's acknowledgement")
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None

    max_candidates: int = Field(2_000, ge=1)
    max_list_ids: int = Field(256, ge=1, description="ids per list feature value (also capped by the manifest)")
    max_rank_body_bytes: int = Field(8 * 1024**2, ge=1024)
    max_delta_body_bytes: int = Field(256 * 1024**2, ge=1024)
    max_bundle_bytes: int = Field(512 * 1024**2, ge=1024)
    max_k: int = Field(1_000, ge=1)
    wait_visible_timeout_s: float = Field(30.0, gt=0)

    onnx_threads: int = Field(1, ge=1, description="intra-op threads per ONNX Runtime session")
    parity_min_topk_overlap: float = Field(
        0.95,
        ge=0,
        le=1,
        description="a non-fp32 bundle goes live only if its parity report's mean top-k overlap with fp32 is at "
        "least this",
    )
    parity_max_auc_diff: float = Field(
        0.002, ge=0, description="... and its AUC differs from fp32's by at most this (when the report has labels)"
    )
    rank_concurrency: int | None = Field(
        None,
        ge=1,
        le=32767,
        description="rankings computed at once, by the whole server (the workers of `liverank serve` share the count: "
        "any worker may use every slot) or by a standalone app; the rest wait off the GIL. Default: the usable cores. "
        "More rankings than cores only make threads fight over the GIL and the caches (BENCHMARKS.md, fifth run)",
    )
    bundle_history: int = Field(5, ge=2, description="bundles kept on disk for rollback")
    status_interval_s: float = Field(2.0, gt=0, description="how often the status page's history is sampled")
    status_history_points: int = Field(
        900, ge=2, description="samples the status page's history keeps (900 at 2 s: the last 30 minutes)"
    )
    gc_freeze: bool = Field(True, description="gc.freeze() after start-up: long-lived objects leave the GC's scans")
    balance_connections: bool = Field(
        True,
        description="a worker holding more than its share of the server's active client connections closes one "
        "after its answer, so that the client reconnects and the kernel places the connection anew "
        "(serving/conn_balance.py)",
    )

    workers: int = Field(
        default_factory=lambda: len(os.sched_getaffinity(0)),
        ge=1,
        description="worker processes answering on the port (default: the cores this process may use)",
    )
    shared_tier_dir: Path | None = Field(
        None, description="where the writer publishes the shared RAM tier (default /dev/shm/liverank-<store hash>)"
    )
    role: Literal["standalone", "worker"] = Field(
        "standalone",
        description="set by `liverank serve` for its workers (they map the shared tier; the server runs one "
        "writer); standalone: an app with its own writer process and RAM tier (tests, embedding)",
    )
    rank_slots_id: int | None = Field(
        None, description="set by `liverank serve` for its workers: the semaphore counting the server's rankings"
    )
    master_pid: int | None = Field(
        None, description="set by `liverank serve` for its workers: they end when this process is gone"
    )
    status_timeout_s: float = Field(
        3.0, gt=0, description="a worker whose heartbeat is older than this no longer counts as serving"
    )
    swap_wait_s: float = Field(60.0, gt=0, description="how long a bundle swap waits for every worker to serve it")

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store"

    @property
    def bundles_path(self) -> Path:
        return self.data_dir / "bundles"

    @property
    def tier_path(self) -> Path:
        if self.shared_tier_dir is not None:
            return self.shared_tier_dir
        return default_dir(self.store_path)

    @property
    def ranking_threads(self) -> int:
        """``rank_concurrency``, or its default: the cores this process may use."""
        return self.rank_concurrency or len(os.sched_getaffinity(0))

    @property
    def workers_path(self) -> Path:
        """Per-worker status records (pid, served bundle, heartbeat)."""
        return self.tier_path / "workers"


def setting_variables() -> frozenset[str]:
    """The environment variable of every setting (``LIVERANK_DATA_DIR`` for ``data_dir``, ...)."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``LIVERANK_*`` names in ``environ`` that are neither a setting nor another command's variable, sorted.
    Compared case-insensitively, as pydantic-settings reads them."""
    allowed = setting_variables() | OTHER_COMMANDS_VARIABLES
    return sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in allowed)
