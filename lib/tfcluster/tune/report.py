"""What a sweep leaves behind: results.csv, best_config.json, the metric-per-trial plot and the table."""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from tfcluster import config as config_mod
from tfcluster import runs
from tfcluster.tune.folders import RUN_DIR
from tfcluster.tune.trials import FINISHED


def _metric_series(result, metric: str) -> tuple[list[int], list[float]]:
    df = result.metrics_dataframe
    if df is None or metric not in getattr(df, "columns", []):
        return [], []
    df = df.dropna(subset=[metric])
    return [int(x) for x in df["training_iteration"]], [float(x) for x in df[metric]]


def read_json(uri_or_path: str) -> dict[str, Any]:
    fs, path = runs.storage_fs(uri_or_path)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def summarize(grid, sc: Any, metric: str, mode: str, exp: str, sampled: list[str],
              total_steps=None, local_dir: str | None = None) -> dict[str, Any]:
    """Write results.csv, best_config.json and the plot into the experiment `exp` (a path or URI; the
    files are written in `local_dir` first when it is a URI); print the table; return the best trial's
    row, whose out_dir is the trial's run folder in storage."""
    exp_dir = local_dir or exp
    os.makedirs(exp_dir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    series: dict[str, tuple[list[int], list[float]]] = {}
    for result in grid:
        cfg = result.config or {}
        its, vals = _metric_series(result, metric)
        trial_dir = result.path
        trial_id = os.path.basename(trial_dir).replace("trial_", "") if trial_dir else "?"
        best = (max(vals) if mode == "max" else min(vals)) if vals else float("nan")
        last_step = int((result.metrics or {}).get("step", 0))
        planned = total_steps(cfg) if total_steps else 0
        finished = bool((result.metrics or {}).get(FINISHED)) or (planned > 0 and last_step >= planned)
        status = "ERROR" if result.error else ("DONE" if finished else "STOPPED")
        rows.append({"trial": trial_id, "status": status, "iterations": len(its),
                     "step": last_step, metric: best,
                     f"last_{metric}": vals[-1] if vals else float("nan"),
                     **{k: cfg.get(k) for k in sampled},
                     "out_dir": runs.join(exp, os.path.basename(trial_dir.rstrip("/")), RUN_DIR)})
        series[trial_id] = (its, vals)
    rows.sort(key=lambda r: r["trial"])
    cols = list(rows[0]) if rows else ["trial"]
    with open(os.path.join(exp_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    scored = [r for r in rows if r[metric] == r[metric]]
    best_row = (max if mode == "max" else min)(scored, key=lambda r: r[metric]) if scored else None
    plot_path = plot(series, metric, os.path.join(exp_dir, f"{metric.replace('/', '_')}.png"))
    print_table(rows, metric, sampled)
    if best_row is not None:
        full = read_json(runs.join(best_row["out_dir"], config_mod.CONFIG_FILE))
        best = {"trial": best_row["trial"], "metric": metric, "mode": mode, "value": best_row[metric],
                "config": {k: best_row[k] for k in sampled}, "full_config": full, "out_dir": best_row["out_dir"]}
        with open(os.path.join(exp_dir, "best_config.json"), "w") as f:
            json.dump(best, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"# best trial {best_row['trial']}: {metric} {best_row[metric]:.4g} with "
              + ", ".join(f"{k}={best_row[k]!r}" for k in sampled), flush=True)
    if exp_dir != exp:
        import pyarrow.fs

        fs, path = runs.storage_fs(exp)
        for name in os.listdir(exp_dir):
            if os.path.isfile(os.path.join(exp_dir, name)):
                pyarrow.fs.copy_files(os.path.join(exp_dir, name), f"{path}/{name}", destination_filesystem=fs)
    print(f"# results {runs.join(exp, 'results.csv')}, plot {runs.join(exp, os.path.basename(plot_path))}",
          flush=True)
    return best_row or {}


def plot(series: dict[str, tuple[list[int], list[float]]], metric: str, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for trial, (its, vals) in sorted(series.items()):
        if its:
            ax.plot(its, vals, marker="o", label=trial)
    ax.set_xlabel("training iteration (eval reports)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    if any(its for its, _ in series.values()):
        ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return ("''" if v == "" else v) if isinstance(v, str) else str(v)


def print_table(rows: list[dict[str, Any]], metric: str, sampled: list[str]) -> None:
    cols = ["trial", "status", "iterations", "step", metric, *sampled]
    table = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), flush=True)
    for t in table:
        print("  ".join(x.ljust(w) for x, w in zip(t, widths)), flush=True)
