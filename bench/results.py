#!/usr/bin/env python3
"""The README's Results section, regenerated from run folders and benchmark JSON.

    python bench/results.py [--runs runs] [--docs docs/results] [--readme README.md]
    make results

For every run folder under --runs (a folder with config.json and metrics.jsonl) it writes, under
--docs: NMT's dev/test BLEU against wall minutes; DCGAN's eval/swd (and eval/fid_mnist) curve,
its 8x8 sample grids at four points of the run and the interpolation grid of the final (best)
generator (`--visualize`'s, made when missing); small PNGs (< 200 KB). RL figures come from
bench/results/rl.json (`python bench/rl.py --what compare`). It then rewrites the table and
pictures between the README's `<!-- results:start -->` and `<!-- results:end -->` markers.
Only figures measured on this repository's code appear; a workload without a run folder says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- results:start -->", "<!-- results:end -->"
MAX_PNG = 200 * 1024
PUBLISHED = {
    "nmt": "attention LSTMs of this size: 33-38 BLEU on test_2016_flickr",
    "dcgan": "DCGAN-tensorflow shows sample grids, no number",
}


def read_run(folder: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return cfg, records


def kind(cfg: dict) -> str:
    if "src" in cfg and "tgt" in cfg:
        return "nmt"
    if "gf_dim" in cfg:
        return "dcgan"
    if "env" in cfg:
        return "rl"
    return "other"


def minutes(records: list[dict]) -> float:
    times = [r["time"] for r in records if "time" in r]
    return (max(times) - min(times)) / 60 if len(times) > 1 else 0.0


def series(records: list[dict], key: str) -> tuple[list[float], list[float], list[int]]:
    t0 = min(r["time"] for r in records if "time" in r)
    rows = [r for r in records if key in r]
    return [(r["time"] - t0) / 60 for r in rows], [float(r[key]) for r in rows], [int(r["step"]) for r in rows]


def small_png(src: str, dest: str) -> str:
    """Copy a PNG, shrunk (halved until) under MAX_PNG."""
    from PIL import Image

    shutil.copyfile(src, dest)
    while os.path.getsize(dest) > MAX_PNG:
        img = Image.open(dest)
        img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.LANCZOS).save(dest, optimize=True)
    return dest


def plot(xs_list, label_list, xlabel: str, ylabel: str, title: str, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (x, y), label in zip(xs_list, label_list):
        if x:
            ax.plot(x, y, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def served_note(name: str, path: str) -> str:
    """"; served: BLEU x" from bench/nmt_served_bleu.py's JSON when it scored this run's export."""
    if not path or not os.path.exists(path):
        return ""
    with open(path) as f:
        served = json.load(f)
    bleu = (served.get("served") or {}).get("bleu", served.get("served_bleu"))
    if os.path.basename(os.path.normpath(served.get("run", ""))) != name or bleu is None:
        return ""
    return f"; through `tfcluster serve`: test BLEU {bleu:.1f}"


def other_bleus(record: dict) -> str:
    """The test set's other BLEU figures beside the standard one (sacrebleu, cased), when the run logged them."""
    parts = [f"{what} {record[key]:.1f}" for key, what in (
        ("eval/test_bleu_tok", "tokenized"), ("eval/test_bleu_lc_tok", "lowercased tokenized references")) if key in record]
    return f" (sacrebleu cased 13a; {', '.join(parts)})" if parts else ""


def nmt_result(name: str, folder: str, cfg: dict, records: list[dict], docs: str, served: str = "") -> dict:
    dev = series(records, "eval/bleu")
    test = series(records, "eval/test_bleu")
    png = plot([(dev[0], dev[1]), (test[0], test[1])], ["dev BLEU", "test BLEU"], "wall minutes", "BLEU",
               f"NMT {cfg['src']}->{cfg['tgt']}: BLEU against wall time", os.path.join(docs, f"{name}_bleu_minutes.png"))
    # The kept model (best/, what is exported) is the evaluation with the highest dev BLEU, the
    # average of the last checkpoints (--avg_ckpts) included; the later one on a tie.
    evals = [r for r in records if "eval/bleu" in r]
    best = max(reversed(evals), key=lambda r: r["eval/bleu"]) if evals else {}
    how = " (checkpoint average)" if "eval/avg_ckpts" in best else ""
    train = os.path.normpath(str(cfg.get("train_prefix", "")))
    return {"workload": "NMT", "run": name, "data": os.path.join(os.path.basename(os.path.dirname(train)), os.path.basename(train)),
            "minutes": round(minutes(records), 1),
            "metric": f"dev BLEU {best.get('eval/bleu', float('nan')):.1f}, test BLEU "
                      f"{best.get('eval/test_bleu', float('nan')):.1f} at step {best.get('step', 0)}{how}{other_bleus(best)}"
                      f"{served_note(name, served)}",
            "published": PUBLISHED["nmt"], "pictures": [png]}


def dcgan_result(name: str, folder: str, cfg: dict, records: list[dict], docs: str, python: str) -> dict:
    swd = series(records, "eval/swd")
    curves = [(swd[2], swd[1])]
    labels = ["eval/swd (lower is better)"]
    fid = series(records, "eval/fid_mnist")
    if fid[1]:
        curves.append((fid[2], fid[1]))
        labels.append("eval/fid_mnist")
    pictures = [plot(curves, labels, "step", "distance", f"DCGAN {cfg['dataset']}", os.path.join(docs, f"{name}_eval.png"))]
    samples_dir = cfg.get("sample_dir") or os.path.join(folder, "samples")
    grids = sorted(glob.glob(os.path.join(samples_dir, "train_*.png")))
    if grids:
        picks = sorted({grids[0], grids[len(grids) // 3], grids[2 * len(grids) // 3], grids[-1]})
        for i, g in enumerate(picks):
            pictures.append(small_png(g, os.path.join(docs, f"{name}_samples_{i}_{os.path.basename(g)}")))
    interp = os.path.join(samples_dir, "visualize_interpolation.png")
    if not os.path.exists(interp):  # the final generator's interpolation grid, as --visualize makes it
        subprocess.run([python, os.path.join(ROOT, "jobs", "train_dcgan.py"), "--out_dir", folder, "--visualize"],
                       check=False, capture_output=True)
    if os.path.exists(interp):
        pictures.append(small_png(interp, os.path.join(docs, f"{name}_interpolation.png")))
    metric = f"eval/swd {swd[1][0]:.3g} -> {min(swd[1]):.3g}" if swd[1] else "no evaluation"
    if fid[1]:
        metric += f"; eval/fid_mnist {fid[1][0]:.3g} -> {min(fid[1]):.3g}"
    return {"workload": "DCGAN", "run": name, "data": cfg["dataset"], "minutes": round(minutes(records), 1),
            "metric": metric, "published": PUBLISHED["dcgan"], "pictures": pictures}


def rl_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    compare = data.get("compare", {})
    rows = []
    for key, label in (("tfcluster_dqn", "DQN (tfcluster)"), ("tfcluster_pg", "REINFORCE (tfcluster)"),
                       ("rllib_ppo_tf", "PPO (RLlib, TF)")):
        r = compare.get(key)
        if not r or not r.get("median_seconds"):
            continue
        means = [x.get("greedy_mean") for x in r["runs"] if x.get("solved")]
        rows.append({"workload": label, "run": "bench/rl.py --what compare", "data": "CartPole-v1",
                     "command": "python bench/rl.py --what compare", "hardware": f"{data['machine']['cpus']} CPU cores, no GPU" if data.get("machine", {}).get("cpus") else "",
                     "minutes": round(r["median_seconds"] / 60, 2),
                     "metric": f"greedy mean over 100 held-out episodes {min(means):.0f}-{max(means):.0f}, "
                               f"solved {r['solved']}, median {r['median_seconds']} s / {r['median_env_steps']} env steps",
                     "published": "solved: >= 475 (gymnasium)", "pictures": []})
    return rows


def first_command(folder: str) -> dict:
    """The first record of the run's commands.jsonl (time, argv, cpus, gpus): the command that started it."""
    path = os.path.join(folder, "commands.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.loads(f.readline())


def command(first: dict) -> tuple[str, str]:
    """(the command, paths relative to the repository; its hardware), or ("", "") for a run without one."""
    if not first:
        return "", ""
    args = [os.path.relpath(a, ROOT) if os.path.isabs(a) else a for a in first.get("argv", [])]
    gpus = first.get("gpus") or 0
    return " ".join(args), f"{first.get('cpus')} CPU cores" + (f", {gpus} GPU" if gpus else ", no GPU")


def render(rows: list[dict], docs_rel: str, cpus: int) -> str:
    lines = [START, "",
             f"Measured on this repository's code, on a {cpus}-core CPU machine without a GPU; regenerated by "
             "`make results` (`python bench/results.py`) from the run folders and `bench/results/rl.json`.", "",
             "| workload | data | command | hardware | wall minutes | result | published reference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        how = f"`{r['command']}`" if r.get("command") else f"run `{r['run']}`"
        lines.append(f"| {r['workload']} | {r['data']} | {how} | {r.get('hardware') or 'not recorded'} | "
                     f"{r['minutes']} | {r['metric']} | {r['published']} |")
    for r in rows:
        for p in r["pictures"]:
            lines += ["", f"![{os.path.basename(p)}]({docs_rel}/{os.path.basename(p)})"]
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=os.path.join(ROOT, "runs"), help="folder of run folders")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "results"), help="where the PNGs go")
    p.add_argument("--rl", default=os.path.join(ROOT, "bench", "results", "rl.json"))
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    p.add_argument("--served", default=os.path.join(ROOT, "bench", "results", "nmt_served_bleu.json"),
                   help="bench/nmt_served_bleu.py's JSON: the served BLEU of an NMT run's export")
    a = p.parse_args(argv)
    os.makedirs(a.docs, exist_ok=True)
    rows = []
    for folder in sorted(glob.glob(os.path.join(a.runs, "*"))):
        if not (os.path.exists(os.path.join(folder, "config.json")) and os.path.exists(os.path.join(folder, "metrics.jsonl"))):
            continue
        cfg, records = read_run(folder)
        started = first_command(folder)
        if "time" in started:  # wall minutes count from the command's start, not from the first report
            records = [{"step": 0, "time": started["time"]}, *records]
        name = os.path.basename(folder.rstrip("/"))
        k = kind(cfg)
        if k == "nmt" and any("eval/bleu" in r for r in records):
            rows.append(nmt_result(name, folder, cfg, records, a.docs, a.served))
        elif k == "dcgan" and any("eval/swd" in r for r in records):
            rows.append(dcgan_result(name, folder, cfg, records, a.docs, sys.executable))
        else:
            continue
        rows[-1]["command"], rows[-1]["hardware"] = command(started)
    rows += rl_rows(a.rl)
    docs_rel = os.path.relpath(a.docs, os.path.dirname(os.path.abspath(a.readme)))
    block = render(rows, docs_rel, os.cpu_count() or 0)
    with open(a.readme) as f:
        text = f.read()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
        with open(a.readme, "w") as f:
            f.write(text)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
