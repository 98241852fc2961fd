"""Op-by-op profile of the train step: where the time goes, JAX (XLA:CPU thunks) and PyTorch.

JAX: the step that benchmarks/train_step.py times (``make_train_step`` under
``DataParallel("shard_map")``) runs ``--steps`` times under ``jax.profiler.trace``; every XLA
thunk event (one per HLO instruction of the compiled step: fusion, convolution, dot, copy, ...)
is summed by instruction and put in a category from its HLO opcode, the fused computation's
ops and the JAX ``op_name`` metadata (``jvp(...)`` is the forward pass, ``transpose(jvp(...))``
the backward pass; the Flax module path says conv or BN). PyTorch (``--torch``): the same step
of the channels-last twin under ``torch.profiler``, self CPU time per aten op, categorised
likewise.

    python benchmarks/profile_step.py --models resnet20 --batch 128 --dtype float32 --torch

Thunk times are summed over the executor's threads: independent thunks may overlap, and one
thunk may itself use every core (Eigen, YNNPACK), so shares are of the summed thunk time; the
wall time per step is printed next to it. Eigen convolution thunks may run asynchronously: their
event then covers only the launch (the ``conv_general_dilated.N`` rows under 0.1 ms), so the
summed time undercounts those convolutions (the gap to the wall time is mostly theirs).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from benchmarks import machine  # noqa: E402
from benchmarks import step_common as bench  # noqa: E402
from benchmarks.step_torch import TorchStep  # noqa: E402

DW = "conv weight-grad (dw: matmul or swapped conv)"
CATEGORIES = [
    "conv forward", "conv input-grad (dx)", DW,
    "dw/dx operand copies (im2col, pad)", "BN forward (stats + normalise)",
    "BN backward", "ReLU/residual/shortcut", "loss + fc", "optimizer update (+ finite check)",
    "copies/transposes", "other",
]

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+(?: \S+)*?) ([\w\-]+)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
# conv_impl="onednn" (resnet_jax.models.onednn): one custom call per convolution pass.
_ONEDNN = {"resnet_jax_onednn_conv_fwd": "conv forward",
           "resnet_jax_onednn_conv_bwd_data": "conv input-grad (dx)",
           "resnet_jax_onednn_conv_bwd_weights": DW}


def parse_hlo(text: str) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """Instructions (name -> opcode, op_name, called computation) and each computation's
    opcodes, from ``compiled.as_text()``."""
    instrs: dict[str, dict[str, Any]] = {}
    comps: dict[str, set[str]] = collections.defaultdict(set)
    comp = None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            comp = head.group(1)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(3)
        if comp is not None:
            comps[comp].add(opcode)
        calls = _CALLS.search(line)
        opn = _OPNAME.search(line)
        target = _TARGET.search(line)
        dims = re.match(r"\w+\[([\d,]*)\]", m.group(2))
        size = 1
        for d in (dims.group(1).split(",") if dims and dims.group(1) else []):
            size *= int(d)
        instrs[name] = {"opcode": opcode, "op_name": opn.group(1) if opn else "",
                        "calls": calls.group(1) if calls else None, "size": size,
                        "target": target.group(1) if target else ""}
    return instrs, comps


def _called_ops(ins: dict[str, Any], comps: dict[str, set[str]], depth: int = 0) -> set[str]:
    return set(comps.get(ins["calls"], set())) if ins.get("calls") else set()


def categorize(name: str, instrs: dict[str, dict[str, Any]], comps: dict[str, set[str]]) -> str:
    ins = instrs.get(name)
    if ins is None:
        return "other"
    op, opn = ins["opcode"], ins["op_name"]
    if ins.get("target") in _ONEDNN:
        return _ONEDNN[ins["target"]]
    ops = {op} | _called_ops(ins, comps)
    bwd = "transpose(jvp(" in opn
    fwd = "jvp(" in opn and not bwd
    in_conv = bool(re.search(r"/conv\w*/", opn)) or opn.endswith("conv_general_dilated")
    in_bn = "/bn" in opn
    if "convolution" in ops:
        if bwd and ins.get("size", 0) < 1 << 16:  # a kernel-shaped result: the weight gradient
            return DW
        return "conv input-grad (dx)" if bwd else "conv forward"
    if "dot" in ops:
        if "/fc/" in opn:
            return "loss + fc"
        return DW if bwd else "other"
    if in_conv and bwd:
        return "dw/dx operand copies (im2col, pad)"
    if in_bn:
        return "BN backward" if bwd else "BN forward (stats + normalise)"
    if fwd or bwd:
        if "/fc/" in opn or "softmax" in opn or "one_hot" in opn or "ResNet" not in opn:
            return "loss + fc"
        if op in ("copy", "transpose"):
            return "copies/transposes"
        return "ReLU/residual/shortcut"
    if op in ("copy", "transpose", "copy-start", "copy-done"):
        return "copies/transposes"
    if opn.startswith("jit(step_fn)/") or opn in ("reduce_and", "reduce_sum", "psum", "reduce"):
        return "optimizer update (+ finite check)"
    return "other"


def _thunk_events(xplane: str) -> tuple[dict[str, float], dict[str, int]]:
    pd = jax.profiler.ProfileData.from_file(xplane)
    total: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for plane in pd.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for ev in line.events:
                if ev.name.startswith("ThunkExecutor"):
                    continue
                total[ev.name] += ev.duration_ns / 1e6
                count[ev.name] += 1
    return total, count


def profile_jax(name: str, batch: int, dtype: str, steps: int, conv_impl: str,
                dump_hlo: str | None = None) -> dict[str, Any]:
    size, classes = bench.default_image_size(name), bench.default_classes(name)
    model = bench.create_model(name, classes, dtype, conv_impl)
    step = bench.JaxStep(model, batch, size, classes, dtype)
    step.run(2)
    hlo = step.compiled.as_text()
    if dump_hlo:
        Path(dump_hlo).write_text(hlo)
    instrs, comps = parse_hlo(hlo)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp):
            step.run(steps)
        wall = (time.perf_counter() - t0) / steps * 1e3
        xplane = sorted(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True))[-1]
        total, count = _thunk_events(xplane)
    ops = [{"name": k, "ms": v / steps, "calls": count[k] / steps,
            "category": categorize(k, instrs, comps),
            "op_name": instrs.get(k, {}).get("op_name", ""),
            "opcode": instrs.get(k, {}).get("opcode", "")}
           for k, v in total.items()]
    ops.sort(key=lambda r: -r["ms"])
    return {"framework": "jax", "wall_ms_per_step_traced": wall, "ops": ops,
            "categories": _by_category(ops)}


def _by_category(ops: list[dict[str, Any]]) -> dict[str, float]:
    cat: dict[str, float] = collections.defaultdict(float)
    for r in ops:
        cat[r["category"]] += r["ms"]
    return dict(sorted(cat.items(), key=lambda kv: -kv[1]))


TORCH_CATEGORIES = [  # (substring of the aten op, category); first match wins
    ("convolution_backward", "conv input-grad + weight-grad (fused in oneDNN)"),
    ("mkldnn_convolution", "conv forward"), ("_convolution", "conv forward"),
    ("native_batch_norm_backward", "BN backward"), ("batch_norm", "BN forward (stats + normalise)"),
    ("threshold_backward", "ReLU/residual/shortcut"), ("relu", "ReLU/residual/shortcut"),
    ("clamp_min", "ReLU/residual/shortcut"),
    ("_foreach", "optimizer update"), ("sgd", "optimizer update"),
    ("addmm", "loss + fc"), ("mm", "loss + fc"), ("softmax", "loss + fc"), ("nll", "loss + fc"),
    ("copy_", "copies/transposes"), ("contiguous", "copies/transposes"),
    ("clone", "copies/transposes"), ("add", "ReLU/residual/shortcut"),
]


def profile_torch(name: str, batch: int, dtype: str, steps: int) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    size, classes = bench.default_image_size(name), bench.default_classes(name)
    step = TorchStep(name, batch, size, classes, dtype)
    step.run(2)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step.run(steps)
    wall = (time.perf_counter() - t0) / steps * 1e3
    ops = []
    for e in prof.key_averages():
        if e.self_cpu_time_total <= 0:
            continue
        cat = next((c for key, c in TORCH_CATEGORIES if key in e.key), "other")
        ops.append({"name": e.key, "ms": e.self_cpu_time_total / 1e3 / steps,
                    "calls": e.count / steps, "category": cat})
    ops.sort(key=lambda r: -r["ms"])
    del torch
    return {"framework": "torch", "wall_ms_per_step_traced": wall, "ops": ops,
            "categories": _by_category(ops)}


def report(res: dict[str, Any], top: int) -> str:
    total = sum(r["ms"] for r in res["ops"])
    lines = [f"## {res['framework']}: {res['wall_ms_per_step_traced']:.1f} ms/step wall "
             f"(traced), {total:.1f} ms/step summed op time", "",
             "| category | ms/step | share |", "|---|---|---|"]
    for c, ms in res["categories"].items():
        lines.append(f"| {c} | {ms:.1f} | {100 * ms / total:.0f}% |")
    lines += ["", f"Top {top} ops:", "", "| op | category | calls/step | ms/step | share |",
              "|---|---|---|---|---|"]
    for r in res["ops"][:top]:
        where = r.get("op_name", "").replace("jit(step_fn)/", "")
        label = f"`{r['name']}`" + (f" ({where})" if where else "")
        lines.append(f"| {label} | {r['category']} | {r['calls']:.0f} | {r['ms']:.1f} | "
                     f"{100 * r['ms'] / total:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=list(bench.DTYPES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--conv_impl", default="auto", choices=["auto", "xla", "cpu_fast", "onednn"])
    p.add_argument("--torch", action="store_true", help="also profile the PyTorch twin")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--dump_hlo", default=None, help="write the compiled step's HLO here")
    p.add_argument("--out", default=None, help="JSON with every op")
    args = p.parse_args(argv)
    info = machine.machine()
    print(f"Machine: {machine.machine_line(info)}; load {os.getloadavg()[0]:.2f}\n")
    results = [profile_jax(args.models, args.batch, args.dtype, args.steps, args.conv_impl,
                           args.dump_hlo)]
    if args.torch:
        results.append(profile_torch(args.models, args.batch, args.dtype, args.steps))
    for res in results:
        print(report(res, args.top) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": info, "args": vars(args),
                                              "results": results}, indent=2))


if __name__ == "__main__":
    main()
