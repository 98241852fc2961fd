"""benchmarks/device_check.sh --cpu-smoke: every step of the device check at toy size on CPU,
ending in a well-formed ``device_check: {json}`` line (docs/device_check.md). Needs no GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_jax.data import testing

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "train_step", "input_pipeline", "cifar")


@pytest.mark.slow
@pytest.mark.serial  # its smoke budget is wall-clock
@pytest.mark.skipif(
    not (testing.CIFAR10_ARCHIVE.exists() and testing.IMAGENETTE_ARCHIVE.exists()),
    reason="needs the archives of ../shared/datasets",
)
def test_cpu_smoke_runs_every_step_and_ends_with_the_summary(tmp_path):
    env = dict(os.environ)
    # The script as a user runs it: this python, one CPU device (not conftest's 8 simulated
    # ones), the datasets of ../shared, the default budget.
    env["PYTHON"] = sys.executable
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "host_platform_device_count" not in f)
    env["TMPDIR"] = str(tmp_path)
    env["DEVICE_CHECK_LOGS"] = str(tmp_path / "logs")
    for knob in ("DATASETS_DIR", "DEVICE_CHECK_SECONDS", "CIFAR_STEPS"):
        env.pop(knob, None)
    env["WHEEL_DIR"] = str(tmp_path / "no-wheels")  # a ./.whl of the checkout stays unused

    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--cpu-smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + "\n--- stderr ---\n" + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("device_check: "), out[-3000:]
    s = json.loads(last.removeprefix("device_check: "))

    assert s["mode"] == "cpu-smoke"
    assert s["backend"] == "cpu" and s["device_kind"] and s["jax"]
    assert s["status"] == {step: "ok" for step in STEPS}, s["status"]
    # (b) the train-step benchmark
    assert s["train_step"].startswith("resnet20 float32 batch 8")
    assert s["train_img_s"] > 0 and 0 < s["mfu"] < 1
    # (c) the input pipeline, every case of benchmarks/input_pipeline.py
    assert s["pipeline_img_s"] and all(v > 0 for v in s["pipeline_img_s"].values())
    assert s["pipeline_cores"] == os.cpu_count()
    # (d) ResNet-20 on CIFAR-10, next to the paper's 8.75%, and honest about its length
    assert 0 <= s["cifar_test_error"] <= 1 and s["paper_error"] == 0.0875
    assert s["cifar_steps_trained"] == s["cifar_eval_step"] == s["cifar_steps_planned"] == 10
    assert "not comparable" in s["cifar_note"]
    # Timing of every step, and the whole run inside the smoke budget (3 minutes)
    assert set(s["seconds"]) == {*STEPS, "total"}
    assert all(s["seconds"][step] > 0 for step in ("train_step", "input_pipeline", "cifar"))
    assert s["seconds"]["total"] < 180
    assert "paper: 8.75%" in proc.stdout
    # The logs and results asked for stay; the scratch data (images, checkpoints) does not.
    logs = {p.name for p in (tmp_path / "logs").iterdir()}
    assert {"train_step.log", "train_step.json", "input_pipeline.log", "cifar.log"} <= logs
    assert not list(tmp_path.glob("device_check.*/cifar10"))
    assert not list(tmp_path.glob("device_check.*/runs"))
