"""The layering of ARCHITECTURE.md, kept by import-linter's contracts in pyproject.toml: the real tree
passes `lint-imports`; the same tree with one upward import added (a foundation module reaching the
training driver, inside a function) fails it, naming the line; tools/import_cycles.py finds no cycle
in the tree and names the lines of one that a test adds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(lib: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"], cwd=lib,
                          env={**os.environ, "PYTHONPATH": lib}, capture_output=True, text=True, timeout=300)


def tree_copy(tmp_path) -> str:
    lib = str(tmp_path / "lib")
    shutil.copytree(os.path.join(ROOT, "lib", "tfcluster"), os.path.join(lib, "tfcluster"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return lib


def test_the_tree_keeps_its_layers():
    out = lint(os.path.join(ROOT, "lib"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_upward_import_fails_with_its_line(tmp_path):
    lib = tree_copy(tmp_path)
    path = os.path.join(lib, "tfcluster", "storage.py")
    with open(path, "a") as f:
        f.write("\n\ndef _reach_up():\n    from tfcluster.train import driver\n\n    return driver\n")
    line = open(path).read().splitlines().index("    from tfcluster.train import driver") + 1
    out = lint(lib)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout
    assert f"tfcluster.storage -> tfcluster.train.driver (l.{line})" in out.stdout  # the offending line


def test_no_import_cycle_between_modules(tmp_path):
    script = os.path.join(ROOT, "tools", "import_cycles.py")
    ok = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.startswith("no import cycles among the"), ok.stdout + ok.stderr
    lib = tree_copy(tmp_path)
    with open(os.path.join(lib, "tfcluster", "errors.py"), "a") as f:
        f.write("\n\ndef _back():\n    from tfcluster import storage\n\n    return storage\n")
    bad = subprocess.run([sys.executable, script, "--path", lib], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "import cycle among 2 modules" in bad.stdout
    assert "tfcluster.errors -> tfcluster.storage (line" in bad.stdout and "from tfcluster import storage" in bad.stdout
