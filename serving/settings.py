"""Server settings, read from ``LIVERANK_*`` environment variables (or passed in by the CLI and tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


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
    updater_poll_s: float = Field(0.002, gt=0, description="idle wait between inbox checks")
    writer: Literal["process", "thread"] = Field(
        "process",
        description="where deltas are written to LMDB: a separate process (default: ranking load cannot slow it "
        "down) or a thread of the server",
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
    rank_concurrency: int = Field(
        2,
        ge=1,
        description="ranking requests computed at once (more wait, off the GIL): about the number of cores; more "
        "threads only fight over the GIL and starve the follower",
    )
    bundle_history: int = Field(5, ge=2, description="bundles kept on disk for rollback")
    gc_freeze: bool = Field(True, description="gc.freeze() after start-up: long-lived objects leave the GC's scans")

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store"

    @property
    def bundles_path(self) -> Path:
        return self.data_dir / "bundles"
