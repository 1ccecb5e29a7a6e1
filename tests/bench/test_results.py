"""`make results` (bench/results.py): the README's Results table and pictures rebuilt from run folders."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)


def _run(folder, cfg, records):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_results_rebuilds_the_readme_section_from_run_folders(tmp_path):
    runs = tmp_path / "runs"
    t0 = 1_800_000_000.0
    _run(str(runs / "nmt"), {"src": "en", "tgt": "de", "train_prefix": "/d/train"},
         [{"step": s, "time": t0 + 60 * m, "eval/bleu": b, "eval/test_bleu": b - 1}
          for s, m, b in ((500, 10, 12.0), (1000, 20, 24.0), (1500, 30, 23.0))])
    (runs / "nmt" / "commands.jsonl").write_text(json.dumps(
        {"time": t0 - 60, "argv": ["python", "jobs/train_nmt.py", "--train_prefix", os.path.join(os.path.abspath(ROOT), "data", "train")],
         "cpus": 2, "gpus": 0}) + "\n")
    _run(str(runs / "nmt_avg"), {"src": "en", "tgt": "de", "train_prefix": "/d/train"},
         [{"step": 500, "time": t0, "eval/bleu": 20.0, "eval/test_bleu": 21.0},
          {"step": 1000, "time": t0 + 60, "eval/bleu": 22.0, "eval/test_bleu": 23.0},
          {"step": 1000, "time": t0 + 90, "eval/bleu": 22.5, "eval/test_bleu": 23.5, "eval/avg_ckpts": 2.0}])
    _run(str(runs / "faces"), {"gf_dim": 64, "dataset": "anime_faces"},
         [{"step": s, "time": t0 + s, "eval/swd": v} for s, v in ((100, 120.0), (200, 80.0), (300, 60.0))])
    samples = runs / "faces" / "samples"
    samples.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)  # incompressible: > 200 KB
    for i in range(5):
        Image.fromarray(noise).save(samples / f"train_{i:02d}_0000.png")
    Image.fromarray(noise[:64, :64]).save(samples / "visualize_interpolation.png")
    rl = tmp_path / "rl.json"
    rl.write_text(json.dumps({"compare": {"tfcluster_pg": {"median_seconds": 2.3, "median_env_steps": 1000, "solved": "3/3",
                                                           "runs": [{"solved": True, "greedy_mean": 500.0}]}}}))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Results\n<!-- results:start -->\nSTALE-TABLE\n<!-- results:end -->\n\n## Next\n")
    docs = tmp_path / "docs" / "results"
    served = tmp_path / "served.json"
    served.write_text(json.dumps({"run": "runs/nmt_avg", "served_bleu": 23.5, "logged_test_bleu": 23.5}))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "results.py"), "--runs", str(runs),
                        "--docs", str(docs), "--rl", str(rl), "--readme", str(readme), "--served", str(served)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = readme.read_text()
    assert "STALE-TABLE" not in text and text.endswith("<!-- results:end -->\n\n## Next\n")
    # The kept model's figures: the best dev BLEU (not the last evaluation), or the checkpoint average.
    # The command that started the run (paths relative to the repository) and its hardware, from commands.jsonl.
    assert ("| NMT | d/train | `python jobs/train_nmt.py --train_prefix data/train` | 2 CPU cores, no GPU | 31.0 | "
            "dev BLEU 24.0, test BLEU 23.0 at step 1000 |") in text
    assert ("| NMT | d/train | run `nmt_avg` | not recorded | 1.5 | dev BLEU 22.5, test BLEU 23.5 at step 1000 (checkpoint average); "
            "through `tfcluster serve`: test BLEU 23.5 |") in text
    assert "| DCGAN | anime_faces | run `faces` | not recorded | 3.3 | eval/swd 120 -> 60 |" in text
    assert "| REINFORCE (tfcluster) | CartPole-v1 |" in text
    pngs = sorted(os.listdir(docs))
    assert "nmt_bleu_minutes.png" in pngs and "nmt_avg_bleu_minutes.png" in pngs and "faces_eval.png" in pngs and "faces_interpolation.png" in pngs
    assert len([n for n in pngs if n.startswith("faces_samples_")]) == 4  # four points of the run
    assert all(os.path.getsize(docs / n) < 200 * 1024 for n in pngs)
    assert all(f"(docs/results/{n})" in text for n in pngs)
