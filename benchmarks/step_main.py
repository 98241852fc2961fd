"""The main mode of benchmarks/train_step.py: our step per (model, batch, dtype), and with
``--compare`` a baseline timed side by side in the same process (A B A B ... chunks).

Baselines: ``torch`` (the PyTorch twin, benchmarks/step_torch.py), ``flax_example`` (the Flax
example's ResNet, benchmarks/flax_example_resnet.py, in our step) and ``conv_xla`` (our model
with ``conv_impl="xla"``: lax's convolution backward).

    python benchmarks/train_step.py --models resnet20 --batch 128 --dtypes float32,bfloat16
    python benchmarks/train_step.py --models resnet20 --batch 128 --compare torch
    python benchmarks/train_step.py --models resnet50 --batch 8 --image_size 112 \\
        --compare flax_example
    python benchmarks/train_step.py --models resnet20,resnet56 --batch 128 --compare conv_xla
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import resnet_jax
from benchmarks import machine
from benchmarks.step_common import (
    DTYPES,
    GIB,
    JaxStep,
    Runner,
    create_model,
    default_classes,
    default_image_size,
    device_peak_bytes,
    fmt,
    max_rss_gib,
    time_alternating,
)


# ---- baselines: (model name, batch, image size, classes, dtype) -> a runner ------------------
def _torch(name: str, batch: int, size: int, classes: int, dtype: str) -> Runner:
    from benchmarks import step_torch

    return step_torch.TorchStep(name, batch, size, classes, dtype)


def _flax_example(name: str, batch: int, size: int, classes: int, dtype: str) -> Runner:
    from benchmarks import flax_example_resnet

    model = flax_example_resnet.create_model(name, classes, DTYPES[dtype])
    return JaxStep(model, batch, size, classes, dtype)


def _conv_xla(name: str, batch: int, size: int, classes: int, dtype: str) -> Runner:
    # The same step with lax's convolution backward.
    return JaxStep(create_model(name, classes, dtype, "xla"), batch, size, classes, dtype)


BASELINES: dict[str, Callable[[str, int, int, int, str], Runner]] = {
    "torch": _torch, "flax_example": _flax_example, "conv_xla": _conv_xla,
}  # fmt: skip


# ---- one row ---------------------------------------------------------------------------------
def measure(args: argparse.Namespace, name: str, batch: int, size: int, classes: int,
            dtype: str, macs: int) -> dict[str, Any]:
    """Times our step (and the --compare baseline) and returns the table row."""
    model = create_model(name, classes, dtype, args.conv_impl)
    runners: dict[str, Any] = {"jax": JaxStep(model, batch, size, classes, dtype)}
    if args.compare:
        runners[args.compare] = BASELINES[args.compare](name, batch, size, classes, dtype)
    times = time_alternating(runners, args.warmup, args.repeats, args.min_seconds)
    peak, peak_src = machine.peak_tflops(dtype, args.peak_tflops)
    jx: JaxStep = runners["jax"]
    dev_peak = device_peak_bytes()
    row: dict[str, Any] = {
        "model": name, "batch": batch, "image_size": size, "dtype": dtype,
        "compile_s": jx.compile_s, "trace_s": jx.trace_s,
        "first_step_s": jx.first_step_s,
        "ms_per_step": times["jax"]["ms_per_step"],
        "images_per_s": batch * 1e3 / times["jax"]["ms_per_step"],
        "timing": times,
        "step_flops_xla": jx.flops,
        "step_flops_6macs": 6.0 * macs * batch / jx.num_devices,
        "peak_tflops": peak, "peak_source": peak_src,
        "xla_step_memory_gib": jx.xla_bytes / GIB if jx.xla_bytes else None,
        "peak_memory_gib": (dev_peak / GIB) if dev_peak else max_rss_gib(),
        "peak_memory_source": (
            "device peak_bytes_in_use" if dev_peak else "process max RSS"
            + (" (incl. PyTorch)" if args.compare == "torch" else "")
        ),
    }
    step_s = row["ms_per_step"] / 1e3
    # XLA's cost analysis cannot see into custom calls: with the oneDNN convolutions
    # (conv_impl "onednn", or "auto" on the CPU) its count misses them, and MFU counts the
    # textbook 6 x MACs x batch instead.
    xla_counts_convs = jx.flops >= 0.9 * row["step_flops_6macs"]
    work = jx.flops if xla_counts_convs else row["step_flops_6macs"]
    row["mfu_flops_source"] = "xla" if xla_counts_convs else "6macs"
    row["mfu"] = (work / step_s / (peak * 1e12)) if peak and work else None
    row["achieved_tflops"] = work / step_s / 1e12
    for other, runner in runners.items():
        if other == "jax":
            continue
        ms = times[other]["ms_per_step"]
        row[f"{other}_ms_per_step"] = ms
        row[f"{other}_images_per_s"] = batch * 1e3 / ms
        row[f"jax_over_{other}"] = ms / row["ms_per_step"]
        if isinstance(runner, JaxStep):  # flax_example, conv_xla
            row[f"{other}_compile_s"] = runner.compile_s
        if other == "flax_example":
            row["flax_example_step_flops_xla"] = runner.flops
    return row


# ---- the mode --------------------------------------------------------------------------------
def bench_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (model, batch, dtype): our step, and the --compare baseline side by side."""
    rows = []
    for name in args.models:
        size = args.image_size or default_image_size(name)
        classes = default_classes(name)
        macs = resnet_jax.count_macs(resnet_jax.create_model(name, num_classes=classes),
                                     (1, size, size, 3))
        for batch in args.batch:
            for dtype in args.dtypes:
                print(f"# {name} batch {batch} {size}px {dtype}", file=sys.stderr, flush=True)
                row = measure(args, name, batch, size, classes, dtype, macs)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "timing"}),
                      file=sys.stderr, flush=True)
    return rows


def table_main(rows: list[dict[str, Any]], compare: str | None) -> str:
    """The Markdown table of ``bench_main``'s rows."""
    head = ["model", "batch", "px", "dtype", "compile s", "ms/step", "img/s", "GFLOP/step (XLA)",
            "GFLOP/step (6·MACs·B)", "TFLOP/s", "MFU", "XLA step mem GiB", "peak mem GiB"]
    if compare:
        head += [f"{compare} img/s", f"JAX / {compare}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["batch"]), str(r["image_size"]), r["dtype"],
                 fmt(r["compile_s"]), fmt(r["ms_per_step"]), fmt(r["images_per_s"]),
                 fmt(r["step_flops_xla"] / 1e9), fmt(r["step_flops_6macs"] / 1e9),
                 fmt(r["achieved_tflops"], ".3f"),
                 fmt(None if r["mfu"] is None else 100 * r["mfu"]) + "%",
                 fmt(r["xla_step_memory_gib"], ".2f"),
                 f"{fmt(r['peak_memory_gib'], '.2f')} ({r['peak_memory_source']})"]
        if compare:
            cells += [fmt(r[f"{compare}_images_per_s"]), fmt(r[f"jax_over_{compare}"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
