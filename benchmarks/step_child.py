"""One measurement in a fresh process: what ``--xla_sweep``, ``--deep`` and ``--processes`` run
per configuration.

The parent runs ``python benchmarks/train_step.py --_child jax|deep|torch ...`` (``run_child``); the
child (``child``) compiles and times one step and prints ``RESULT {json}`` on stdout. A fresh
process reads XLA_FLAGS anew, and a child that runs out of time or memory fails alone.

    python benchmarks/train_step.py --_child jax --models resnet20 --batch 8 --dtypes float32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.step_common import (
    GIB,
    JaxStep,
    create_model,
    default_classes,
    default_image_size,
    device_peak_bytes,
    max_rss_gib,
    time_alternating,
)

SCRIPT = Path(__file__).resolve().with_name("train_step.py")


# ---- the parent's side -----------------------------------------------------------------------
def child_cmd(extra: list[str]) -> list[str]:
    """The command line of a child: this python, benchmarks/train_step.py, ``extra``."""
    return [sys.executable, str(SCRIPT), *extra]


def run_child(cmd: list[str], env: dict[str, str], timeout: float,
              mem_limit_gib: float | None) -> dict[str, Any]:
    """Runs a child of train_step.py; returns its RESULT json, or why there is none.

    The child sets its own address-space limit (``--mem_limit_gib``): a preexec_fn would fork
    this multithreaded (JAX) process.
    """
    # Always passed: the child's own default would cap a child asked to run uncapped (0/None).
    cmd = [*cmd, "--mem_limit_gib", str(mem_limit_gib or 0)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"> {timeout:.0f} s (stopped)", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "wall_s": wall}
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    # A native crash ends in stack frames; the cause is the last line that names an error.
    keys = ("Error", "error", "Check failed", "RESOURCE_EXHAUSTED", "bad_alloc", "Killed")
    cause = [ln for ln in lines if any(k in ln for k in keys)][-1:] or lines[-2:]
    error = f"rc {proc.returncode}: " + " / ".join(cause)[-300:]
    if mem_limit_gib:  # out of memory under the cap reads many ways (OOM, pthread_create, ...)
        error += f" (address space capped at --mem_limit_gib {mem_limit_gib:g}; raise it if short)"
    return {"error": error, "wall_s": wall}


# ---- the child's side ------------------------------------------------------------------------
def _steady_ms(step: JaxStep, steps: int) -> dict[str, Any]:
    """Median and every ms/step of ``steps`` single timed steps (deep nets: seconds each)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step.run(1)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms_per_step": statistics.median(times) if times else None, "ms_all": times}


def _faults_per_step(step: Any, steps: int = 5) -> float:
    """Minor page faults per step of ``steps`` more steps (XLA:CPU's per-step scratch mapping)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step.run(steps)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints ``RESULT {json}`` on stdout."""
    if args.mem_limit_gib:
        # An unrolled ResNet-1202 must fail alone rather than take the machine's RAM.
        lim = int(args.mem_limit_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    name, batch, dtype = args.models[0], args.batch[0], args.dtypes[0]
    size = args.image_size or default_image_size(name)
    classes = default_classes(name)
    if args._child == "torch":  # PyTorch alone: no JAX or oneDNN extension in this process
        from benchmarks.step_torch import TorchStep

        torch_step = TorchStep(name, batch, size, classes, dtype, args.activation,
                               args.self_attention)
        out = time_alternating({"torch": torch_step}, args.warmup, args.repeats,
                               args.min_seconds)["torch"]
        out["faults_per_step"] = _faults_per_step(torch_step)
        print("RESULT " + json.dumps(out), flush=True)
        return
    opts: dict[str, Any] = dict(activation=args.activation, self_attention=args.self_attention)
    if args._child == "deep":
        opts.update(scan_units=bool(args.scan), remat=bool(args.remat))
    model = create_model(name, classes, dtype, args.conv_impl, **opts)
    step = JaxStep(model, batch, size, classes, dtype)
    out: dict[str, Any] = {"init_s": step.init_s, "compile_s": step.compile_s,
                           "trace_s": step.trace_s,
                           "first_step_s": step.first_step_s, "flops": step.flops,
                           "xla_step_memory_gib": step.xla_bytes / GIB if step.xla_bytes else None}
    if args._child == "deep":
        out.update(_steady_ms(step, args.steady_steps))
    else:
        out.update(time_alternating({"jax": step}, args.warmup, args.repeats,
                                    args.min_seconds)["jax"])
        out["faults_per_step"] = _faults_per_step(step)
    out["max_rss_gib"] = max_rss_gib()
    out["device_peak_gib"] = (device_peak_bytes() or 0) / GIB or None
    print("RESULT " + json.dumps(out), flush=True)
