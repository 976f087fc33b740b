// The liverank status page: polls /status/data (only the samples it has not seen yet) and draws them with uPlot.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#175cd3", "#d92d20", "#12805c", "#dc6803", "#7a5af8", "#0e9384", "#c11574", "#4e5ba6"];

let points = [];        // history samples, oldest first, at most `capacity`
let capacity = 900;
let lastSeenMs = -1;
const charts = {};      // chart id -> {plot, key}

function fmt(value, unit, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${value.toFixed(digits === undefined ? 1 : digits)}${unit || ""}`;
}

// Axis ticks: at most 3 significant digits, SI suffixes for large values (ages of test data reach 1e9 s).
function compact(value) {
  if (value === null || value === undefined) return "";
  const abs = Math.abs(value);
  for (const [size, suffix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (abs >= size) return `${Number((value / size).toPrecision(3))}${suffix}`;
  }
  return String(Number(value.toPrecision(3)));
}

// The newest sample for which `pick` has a value (a quiet interval has no latency to report).
function latestOf(pick) {
  for (let i = points.length - 1; i >= 0; i--) {
    const value = pick(points[i]);
    if (value !== null && value !== undefined) return value;
  }
  return null;
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function fillRows(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function chartWidth(id) {
  return Math.max(320, document.getElementById(id).clientWidth);
}

// One uPlot per chart id; rebuilt when `key` (its series set) changes, otherwise fed new data.
function draw(id, key, makeOpts, data) {
  const existing = charts[id];
  if (existing && existing.key === key) {
    existing.plot.setData(data);
    return;
  }
  if (existing) existing.plot.destroy();
  const target = document.getElementById(id);
  const opts = Object.assign({ width: chartWidth(id), height: 240 }, makeOpts());
  charts[id] = { key, plot: new uPlot(opts, data, target) };
  target.dataset.rendered = "true";
}

function timeSeries(id, series, axes) {
  const xs = points.map((p) => p.t_ms / 1000);
  const data = [xs, ...series.map((s) => points.map(s.value))];
  const key = series.map((s) => s.label).join("|");
  draw(id, key, () => ({
    scales: { x: { time: true }, ...Object.fromEntries(axes.map((a) => [a.scale, { auto: true, range: a.range }])) },
    series: [{}, ...series.map((s, i) => ({
      label: s.label, scale: s.scale, stroke: s.color || COLORS[i % COLORS.length], width: 2,
      // Intervals without observations (no delta, no request) have no latency: draw across them, mark the samples.
      spanGaps: Boolean(s.sparse), points: s.sparse ? { show: true, size: 5 } : {},
      value: (u, v) => fmt(v, s.unit, s.digits),
    }))],
    axes: [{}, ...axes.map((a, i) => ({
      scale: a.scale, label: a.label, side: i === 0 ? 3 : 1, grid: { show: i === 0 },
      values: (u, splits) => splits.map(compact),
    }))],
  }), data);
}

function nonNegative(u, min, max) {
  return [0, Math.max(max, 1e-6) * 1.1];
}

function distribution(dist) {
  if (!dist) return;
  const labels = dist.le_ms.map((le, i) => {
    if (le === null) return `> ${fmtLabel(dist.le_ms[i - 1])}`;
    return `≤ ${fmtLabel(le)}`;
  });
  const xs = labels.map((_, i) => i);
  draw("chart-ptv-dist", labels.join("|"), () => ({
    scales: { x: { time: false, range: () => [-0.5, labels.length - 0.5] }, y: { range: nonNegative } },
    series: [
      { value: (u, v) => (v === null ? "–" : labels[v]) },
      { label: "deltas", stroke: COLORS[0], fill: "rgba(23, 92, 211, 0.35)", paths: uPlot.paths.bars({ size: [0.7, 80] }), points: { show: false } },
    ],
    axes: [
      { splits: () => xs, values: (u, splits) => splits.map((i) => labels[i] || ""), rotate: -30, size: 60 },
      { label: "deltas", values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : "")) },
    ],
  }), [xs, dist.count]);
}

function fmtLabel(ms) {
  if (ms === null || ms === undefined) return "?";
  return ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`;
}

function slotsOf(latest) {
  return latest ? Object.keys(latest.rows_by_slot).sort() : [];
}

function render(body) {
  const hist = body.history;
  capacity = hist.capacity;
  for (const p of hist.points) {
    if (p.t_ms > lastSeenMs) {
      points.push(p);
      lastSeenMs = p.t_ms;
    }
  }
  if (points.length > capacity) points = points.slice(points.length - capacity);
  const latest = points.length ? points[points.length - 1] : null;

  // Epoch: always the server's current one, not a sample's.
  document.getElementById("dense-version").textContent = body.epoch.dense_version ?? "none";
  const seqs = Object.entries(body.epoch.sparse_seq).sort();
  fillRows("producers", seqs.length ? seqs.map(([producer, seq]) => {
    const tr = el("tr");
    tr.dataset.producer = producer;
    tr.append(el("td", producer), el("td", String(seq), "seq"));
    return tr;
  }) : [(() => { const tr = el("tr"); tr.append(el("td", "no delta applied yet", "muted")); return tr; })()]);
  document.getElementById("inbox-depth").textContent = String(body.inbox_depth);
  const ready = document.getElementById("ready");
  ready.textContent = body.ready ? "ready" : "not ready";
  ready.className = `pill ${body.ready ? "ok" : "bad"}`;
  document.getElementById("updated").textContent = `updated ${new Date(body.now_ms).toLocaleTimeString()}`;
  document.getElementById("interval").textContent = String(hist.interval_s);
  document.getElementById("capacity").textContent = String(hist.capacity);

  if (latest) {
    document.getElementById("ptv-last").textContent = fmt(latestOf((p) => p.push_to_visible_p99_ms), " ms");
    document.getElementById("deltas-last").textContent = fmt(latest.deltas_per_s, "/s", 2);
    document.getElementById("rps-last").textContent = fmt(latest.rank_rps, " rps");
    document.getElementById("p99-last").textContent = fmt(latestOf((p) => p.rank_p99_ms), " ms");
  }

  timeSeries("chart-ptv",
    [{ label: "mean", scale: "ms", unit: " ms", sparse: true, value: (p) => p.push_to_visible_mean_ms },
     { label: "p99", scale: "ms", unit: " ms", sparse: true, value: (p) => p.push_to_visible_p99_ms }],
    [{ scale: "ms", label: "ms", range: nonNegative }]);
  distribution(hist.push_to_visible_distribution);
  timeSeries("chart-deltas",
    [{ label: "deltas/s", scale: "deltas", unit: "/s", digits: 2, value: (p) => p.deltas_per_s },
     { label: "rows/s", scale: "rows", unit: "/s", value: (p) => p.rows_per_s }],
    [{ scale: "deltas", label: "deltas/s", range: nonNegative }, { scale: "rows", label: "rows/s", range: nonNegative }]);
  timeSeries("chart-rank",
    [{ label: "rps", scale: "rps", unit: " rps", value: (p) => p.rank_rps },
     { label: "p50", scale: "ms", unit: " ms", sparse: true, value: (p) => p.rank_p50_ms },
     { label: "p99", scale: "ms", unit: " ms", sparse: true, value: (p) => p.rank_p99_ms }],
    [{ scale: "rps", label: "rps", range: nonNegative }, { scale: "ms", label: "ms", range: nonNegative }]);
  const slots = slotsOf(latest);
  timeSeries("chart-unseen",
    slots.map((slot) => ({ label: slot, scale: "pct", unit: " %", sparse: true, value: (p) => pct(p.unseen_rate_by_slot[slot]) })),
    [{ scale: "pct", label: "% of ids", range: nonNegative }]);
  timeSeries("chart-age",
    slots.map((slot) => ({ label: slot, scale: "s", unit: " s", sparse: true, value: (p) => p.embedding_age_s_by_slot[slot] ?? null })),
    [{ scale: "s", label: "seconds", range: nonNegative }]);

  fillRows("slots", slots.map((slot) => {
    const rows = latest.rows_by_slot[slot];
    const resident = latest.resident_rows_by_slot[slot] ?? 0;
    const tr = el("tr");
    tr.dataset.slot = slot;
    tr.append(
      el("td", slot), el("td", rows.toLocaleString()), el("td", resident.toLocaleString()),
      el("td", rows ? fmt((100 * resident) / rows, " %") : "–"),
      el("td", fmt(pct(latest.unseen_rate_by_slot[slot]), " %", 2)),
      el("td", fmtAge(latest.embedding_age_s_by_slot[slot])),
    );
    return tr;
  }));

  fillRows("bundles", body.bundles.slice().reverse().map((b) => {
    const tr = el("tr");
    tr.dataset.bundle = b.bundle_id;
    const parity = el("td");
    if (b.parity) parity.append(el("pre", JSON.stringify(b.parity, null, 1), "parity"));
    else parity.textContent = "–";
    tr.append(el("td", b.bundle_id), el("td", b.version ?? "?"), el("td", fmtTime(b.went_live_ms)),
      el("td", b.error ? `unreadable: ${b.error}` : b.live ? "live" : "kept for rollback", b.live ? "live" : ""), parity);
    return tr;
  }));

  const replicas = body.replicas || [];
  document.getElementById("replicas-empty").hidden = replicas.length > 0;
  document.getElementById("replicas").hidden = replicas.length === 0;
  fillRows("replicas", replicas.map((r) => {
    const tr = el("tr");
    tr.append(el("td", r.name ?? "?"), el("td", fmtAge(r.lag_s)), el("td", JSON.stringify(r.applied_seq ?? {})));
    return tr;
  }));

  document.body.dataset.samples = String(points.length);
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
}

function pct(fraction) {
  return fraction === null || fraction === undefined ? null : 100 * fraction;
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const response = await fetch(`/status/data?since_ms=${lastSeenMs}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`/status/data answered ${response.status}`);
    render(await response.json());
    error.hidden = true;
  } catch (exc) {
    error.textContent = `cannot reach the server: ${exc.message}`;
    error.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) chart.plot.setSize({ width: chartWidth(id), height: 240 });
});
poll();
