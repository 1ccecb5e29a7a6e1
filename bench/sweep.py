"""ASHA against FIFO random search over the same NMT space on Multi30k (JSON + a PNG of both curves).

    python bench/sweep.py --data ../shared/data/multi30k --num_samples 8 --num_train_steps 300

Both sweeps sample the same configurations (the same --seed drives Tune's random search),
train each with the train jobs' loop and report dev BLEU at --evals points. FIFO runs
every trial to the end: it is the reference. ASHA (reduction factor 2, grace period 1)
stops the trials below the median at each rung. A "trial-iteration" is one eval period
of one trial; the curves are the best dev BLEU so far against the trial-iterations spent,
in the order the results arrived. Goal: ASHA reaches FIFO's best BLEU with at most half
of FIFO's trial-iterations.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METRIC = "eval/bleu"
SPACE = {  # Adam, one layer of 64 or 128 units: small enough for 2 CPUs, wide enough to matter
    "learning_rate": {"loguniform": [3e-4, 1e-2]},
    "num_units": {"choice": [64, 128]},
    "dropout": {"uniform": [0.0, 0.3]},
    "attention": {"choice": ["", "scaled_luong"]},
}


def curve(exp_dir: str) -> list[dict]:
    """Every eval report of every trial, in arrival order, with the running best."""
    rows = []
    for path in glob.glob(os.path.join(exp_dir, "trial_*", "progress.csv")):
        trial = os.path.basename(os.path.dirname(path))
        with open(path) as f:
            for r in csv.DictReader(f):
                if r.get(METRIC):
                    rows.append({"trial": trial, "iteration": int(r["training_iteration"]),
                                 "time": float(r["timestamp"]), "bleu": float(r[METRIC]),
                                 "start": float(r["timestamp"]) - float(r["time_total_s"])})
    rows.sort(key=lambda r: (r["time"], r["trial"]))
    best = float("-inf")
    for n, r in enumerate(rows, 1):
        best = max(best, r["bleu"])
        r.update(trial_iterations=n, best_bleu=best)
    return rows


def run_sweep(scheduler: str, a: argparse.Namespace, space_file: str) -> dict:
    from tfcluster import workloads
    from tfcluster.tune import sweep

    name = f"{scheduler}-{a.tag}"
    argv = ["--num_samples", str(a.num_samples), "--scheduler", scheduler, "--search", "random",
            "--grace_period", "1", "--evals_per_trial", str(a.evals), "--cpus_per_trial", str(a.cpus_per_trial),
            "--search_space", space_file, "--storage_path", a.storage_path, "--name", name,
            "--src", a.src, "--tgt", a.tgt, "--tokenize", "simple", "--vocab_size", str(a.vocab_size),
            "--train_prefix", os.path.join(a.data, "train"), "--dev_prefix", os.path.join(a.data, "val"),
            "--num_train_steps", str(a.num_train_steps), "--optimizer", "adam", "--num_layers", "1",
            "--batch_size", str(a.batch_size), "--input_feeding", "false", "--seed", str(a.seed)]
    exp_dir = os.path.join(a.storage_path, name)
    results = os.path.join(exp_dir, "results.csv")
    if not (a.reuse and os.path.exists(results)):
        sc, cfg, explicit = sweep.parse(workloads.get("nmt"), argv)
        sweep.run(workloads.get(sc.workload), sc, cfg, explicit)
    rows = curve(exp_dir)
    with open(results) as f:
        trials = list(csv.DictReader(f))
    return {"scheduler": scheduler, "experiment": exp_dir,
            "seconds": round(max(r["time"] for r in rows) - min(r["start"] for r in rows), 1) if rows else None,
            "trial_iterations": len(rows), "best_bleu": max((r["bleu"] for r in rows), default=None),
            "trials": [{k: t[k] for k in ("trial", "status", "iterations", METRIC, *sorted(SPACE))} for t in trials],
            "curve": [[r["trial_iterations"], r["best_bleu"]] for r in rows]}


def plot(fifo: dict, asha: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res, style in ((fifo, "-o"), (asha, "-s")):
        xs, ys = zip(*res["curve"]) if res["curve"] else ((), ())
        ax.step(xs, ys, style, where="post", label=f"{res['scheduler']} ({res['trial_iterations']} trial-iterations)")
    if fifo["best_bleu"] is not None:
        ax.axhline(fifo["best_bleu"], color="grey", lw=0.8, ls="--", label="FIFO's best")
    ax.set_xlabel("trial-iterations spent (eval periods, all trials)")
    ax.set_ylabel("best dev BLEU so far")
    ax.set_title("ASHA vs FIFO random search, NMT on Multi30k")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with train/val .{src,tgt}[.gz] (Multi30k)")
    p.add_argument("--src", default="en")
    p.add_argument("--tgt", default="de")
    p.add_argument("--num_samples", type=int, default=8)
    p.add_argument("--num_train_steps", type=int, default=300)
    p.add_argument("--evals", type=int, default=4, help="eval reports per trial (ASHA's rungs)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--cpus_per_trial", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--storage_path", default="runs/bench_sweep")
    p.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"), help="experiments are fifo-<tag> and asha-<tag>")
    p.add_argument("--reuse", action="store_true", help="summarize finished experiments of --tag instead of rerunning")
    p.add_argument("--out", default=os.path.join(RESULTS, "sweep.json"))
    a = p.parse_args()
    for split in ("train", "val"):
        for lang in (a.src, a.tgt):
            if not (os.path.exists(os.path.join(a.data, f"{split}.{lang}")) or
                    os.path.exists(os.path.join(a.data, f"{split}.{lang}.gz"))):
                sys.exit(f"error: {os.path.join(a.data, f'{split}.{lang}')}[.gz] not found (--data)")
    a.storage_path = os.path.abspath(a.storage_path)
    os.makedirs(a.storage_path, exist_ok=True)
    space_file = os.path.join(a.storage_path, f"space-{a.tag}.json")
    with open(space_file, "w") as f:
        json.dump(SPACE, f)

    fifo = run_sweep("fifo", a, space_file)
    asha = run_sweep("asha", a, space_file)
    target = fifo["best_bleu"]
    reached = next((n for n, b in asha["curve"] if target is not None and b >= target), None)
    fifo_at_best = next((n for n, b in fifo["curve"] if target is not None and b >= target), None)
    result = {
        "benchmark": "sweep_asha_vs_fifo_nmt_multi30k",
        "setup": {k: getattr(a, k) for k in ("src", "tgt", "num_samples", "num_train_steps", "evals", "batch_size",
                                              "vocab_size", "cpus_per_trial", "seed")},
        "space": SPACE,
        "fifo": fifo, "asha": asha,
        "fifo_best_bleu": target,
        "fifo_trial_iterations": fifo["trial_iterations"],
        "fifo_trial_iterations_to_its_best": fifo_at_best,
        "asha_trial_iterations_to_fifo_best": reached,
        "asha_best_bleu": asha["best_bleu"],
        "ratio_vs_fifo_total": round(reached / fifo["trial_iterations"], 3) if reached else None,
        "asha_trial_iterations": asha["trial_iterations"],
        "asha_total_vs_fifo_total": round(asha["trial_iterations"] / fifo["trial_iterations"], 3)
        if fifo["trial_iterations"] else None,
        "goal_met": bool(reached and reached <= fifo["trial_iterations"] / 2),
        "plot": plot(fifo, asha, os.path.splitext(a.out)[0] + ".png"),
        "note": "trial-iterations count eval reports of all trials in arrival order; FIFO runs every trial to the end",
        "machine": {"cpus": os.cpu_count()},
    }
    for res in (fifo, asha):
        res["curve"] = [[n, round(b, 3)] for n, b in res["curve"]]
    emit(result, a.out)


if __name__ == "__main__":
    main()
