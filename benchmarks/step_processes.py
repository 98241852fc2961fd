"""``--processes``: the JAX and PyTorch train steps each in its own fresh process, alternating.

``--compare torch`` times both in one process, where they share one OpenMP runtime (libgomp)
and PyTorch runs ~10% slower once the oneDNN extension has run; here neither sees the other.
Each framework also runs with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (read by glibc only at
process start): XLA:CPU maps and unmaps its per-step scratch buffer every step, and huge pages
cut the page faults that costs. Rounds alternate all four, so machine load affects them alike.

    python benchmarks/train_step.py --processes --models resnet20 --batch 128 \\
        --dtypes float32,bfloat16 --repeats 3 [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from benchmarks.step_child import child_cmd, run_child
from benchmarks.step_common import fmt

HUGETLB = "glibc.malloc.hugetlb=1"
VARIANTS = (("jax", ""), ("torch", ""), ("jax", HUGETLB), ("torch", HUGETLB))


def _env(tunables: str) -> dict[str, str]:
    """This environment with ``GLIBC_TUNABLES`` set to ``tunables`` (absent if empty)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    return env


def bench_processes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per dtype and variant: ms/step of each round (a fresh process each), faults per step."""
    name, batch = args.models[0], args.batch[0]
    # The model column names the options that change the network.
    label = name + (f" + {args.activation}" if args.activation != "relu" else "") + (
        " + self-attention" if args.self_attention else "")
    rows = []
    for dtype in args.dtypes:
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for framework, tunables in VARIANTS:
                cmd = child_cmd(["--_child", framework, "--models", name, "--batch", str(batch),
                                 "--dtypes", dtype, "--repeats", str(args.repeats),
                                 "--warmup", str(args.warmup),
                                 "--min_seconds", str(args.min_seconds),
                                 "--conv_impl", args.conv_impl,
                                 "--activation", args.activation]
                                + (["--image_size", str(args.image_size)]
                                   if args.image_size else [])
                                + (["--self_attention"] if args.self_attention else []))
                res = run_child(cmd, _env(tunables), args.deep_timeout, None)
                print(f"# {framework} {tunables or '(default malloc)'} {dtype}: {res}",
                      file=sys.stderr, flush=True)
                runs[(framework, tunables)].append(res)
        for tunables in ("", HUGETLB):
            jax_ms = [r.get("ms_per_step") for r in runs[("jax", tunables)]]
            torch_ms = [r.get("ms_per_step") for r in runs[("torch", tunables)]]
            # Round by round: each round's two processes ran back to back.
            ratios = [t / j for j, t in zip(jax_ms, torch_ms, strict=True) if j and t]
            for framework in ("jax", "torch"):
                rs = runs[(framework, tunables)]
                ms = [r["ms_per_step"] for r in rs if "ms_per_step" in r]
                faults = [r["faults_per_step"] for r in rs if "faults_per_step" in r]
                rows.append({
                    "model": label, "batch": batch, "dtype": dtype, "framework": framework,
                    "glibc_tunables": tunables, "ms_all": ms,
                    "ms_per_step": statistics.median(ms) if ms else None,
                    "faults_per_step": statistics.median(faults) if faults else None,
                    "jax_over_torch": statistics.median(ratios) if ratios else None,
                    "error": next((r["error"] for r in rs if "error" in r), None),
                })
    return rows


def table_processes(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``bench_processes``' rows."""
    lines = ["| model | batch | dtype | malloc | framework | ms/step per round | median ms/step | "
             "img/s | minor faults/step | JAX / torch (same malloc) | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms_per_step"]
        rounds = " / ".join(fmt(m) for m in r["ms_all"])
        malloc = "hugetlb=1" if r["glibc_tunables"] else "default"
        ratio = fmt(r["jax_over_torch"], ".2f") + "x" if r["framework"] == "jax" else ""
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['dtype']} | {malloc} | {r['framework']} | "
            f"{rounds} | {fmt(ms)} | {fmt(r['batch'] * 1e3 / ms if ms else None, '.0f')} | "
            f"{fmt(r['faults_per_step'], ',.0f')} | {ratio} | {r['error'] or ''} |")
    return "\n".join(lines)
