"""bench/gpu_check.py, the script for the day a GPU is there, runs as is: on this CPU its --quick
smoke run times every workload with and without XLA, and no cell fails (a bad config or a data
path the workload cannot read would show as an `error` row, not as a number)."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)


def test_gpu_check_quick_times_every_workload_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--quick",
                        "--precisions", "float32", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"].startswith("CPU")
    cells = {(r["workload"], r["jit_compile"]): r for r in report["rows"]}
    assert set(cells) == {(w, j) for w in ("nmt", "dcgan", "ocr") for j in (False, True)}
    for r in cells.values():
        assert "error" not in r and r["steps_per_s"] > 0, r
