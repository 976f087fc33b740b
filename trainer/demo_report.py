"""The demo's results: a JSON summary and a PNG chart of AUC over time, fresh against frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt
import orjson


def write_chart(series: list[dict[str, Any]], path: Path, title: str) -> None:
    times = [point["t_s"] for point in series]
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, colour in (("fresh", "tab:green"), ("frozen", "tab:orange")):
        values = [point["auc"].get(name) for point in series]
        axis.plot(times, [float("nan") if v is None else v for v in values], label=name, color=colour, marker="o")
    axis.set_xlabel("wall-clock seconds since serving started")
    axis.set_ylabel("click AUC (served scores vs sampled clicks)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
