"""``--xla_sweep``: the train step under each XLA_FLAGS set, one fresh process per set and round
(XLA reads its flags once); rounds alternate the sets, so machine load affects them alike.

    python benchmarks/train_step.py --xla_sweep --models resnet20 --batch 128 --dtypes float32 \\
        [--sweep_rounds 2] [--xla_flag_sets ';--xla_cpu_use_onednn=true']
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from benchmarks.step_child import child_cmd, run_child
from benchmarks.step_common import fmt

XLA_FLAG_SETS = [
    "",
    "--xla_cpu_use_thunk_runtime=false",  # the pre-thunk runtime; deprecated (a no-op) here
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
]


def _env_with(flags: str) -> dict[str, str]:
    """This process's environment with ``flags`` appended to XLA_FLAGS."""
    env = dict(os.environ)
    # An empty XLA_FLAGS must be absent: XLA reads a non-"--" value as a flag file.
    joined = (env.pop("XLA_FLAGS", "") + " " + flags).strip()
    if joined:
        env["XLA_FLAGS"] = joined
    return env


def _row(flags: str, runs: list[dict[str, Any]], base: list[float | None],
         name: str, batch: int, dtype: str) -> dict[str, Any]:
    """One flag set's medians over its rounds, and its speed-up over the first set, round by
    round."""
    ms = [r["ms_per_step"] for r in runs if "ms_per_step" in r]
    rel = [b / m for b, m in zip(base, [r.get("ms_per_step") for r in runs], strict=True)
           if b and m]
    return {
        "xla_flags": flags or "(none)", "model": name, "batch": batch, "dtype": dtype,
        "ms_per_step": statistics.median(ms) if ms else None,
        "compile_s": statistics.median([r["compile_s"] for r in runs if "compile_s" in r])
        if ms else None,
        "speedup_vs_none": statistics.median(rel) if rel else None,
        "runs": runs,
        "error": next((r["error"] for r in runs if "error" in r), None),
    }


def bench_xla_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each XLA_FLAGS set in its own process (flags are read once); rounds alternate the sets."""
    name, batch, dtype = args.models[0], args.batch[0], args.dtypes[0]
    flag_sets = args.xla_flag_sets or XLA_FLAG_SETS
    results: dict[str, list[dict[str, Any]]] = {f: [] for f in flag_sets}
    for _ in range(args.sweep_rounds):
        for flags in flag_sets:
            cmd = child_cmd(["--_child", "jax", "--models", name, "--batch", str(batch),
                             "--dtypes", dtype, "--repeats", str(args.repeats),
                             "--warmup", str(args.warmup),
                             "--min_seconds", str(args.min_seconds),
                             "--conv_impl", args.conv_impl]
                            + (["--image_size", str(args.image_size)] if args.image_size else []))
            res = run_child(cmd, _env_with(flags), args.deep_timeout, None)
            print(f"# XLA_FLAGS={flags!r}: {res}", file=sys.stderr, flush=True)
            results[flags].append(res)
    base = [r.get("ms_per_step") for r in results[flag_sets[0]]]
    return [_row(flags, runs, base, name, batch, dtype) for flags, runs in results.items()]


def table_sweep(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``bench_xla_sweep``'s rows."""
    lines = ["| XLA_FLAGS | compile s | ms/step | speed-up vs none | note |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['xla_flags']}` | {fmt(r['compile_s'])} | {fmt(r['ms_per_step'])} | "
                     f"{fmt(r['speedup_vs_none'], '.2f')} | {r['error'] or ''} |")
    return "\n".join(lines)
