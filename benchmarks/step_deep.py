"""``--deep``: compile, first-step and steady-state time and memory of deep networks, per
(model, scan_units, remat), each in a fresh process with a timeout and an address-space limit.

    python benchmarks/train_step.py --deep [--models resnet110] [--deep_timeout 300] \\
        [--unrolled_timeout S] [--mem_limit_gib 12] [--steady_steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from benchmarks.step_child import child_cmd, run_child
from benchmarks.step_common import default_image_size, fmt

DEEP_MODELS = ["resnet50", "resnet110", "preact_resnet1001", "resnet1202"]
DEEP_VARIANTS = [(False, False), (True, False), (False, True), (True, True)]  # (scan, remat)


def bench_deep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Compile, first-step and steady-state time and memory per (model, scan_units, remat),
    each in a subprocess with a timeout and an address-space limit."""
    rows = []
    models = args.models if args.models_given else DEEP_MODELS
    for name in models:
        size = args.image_size or default_image_size(name)
        for scan, remat in DEEP_VARIANTS:
            if (name, scan, remat) in args.deep_skip:
                continue
            cmd = child_cmd(["--_child", "deep", "--models", name, "--batch", str(args.batch[0]),
                             "--dtypes", args.dtypes[0], "--scan", str(int(scan)),
                             "--remat", str(int(remat)), "--steady_steps",
                             str(args.steady_steps), "--conv_impl", args.conv_impl,
                             "--image_size", str(size)])
            timeout = args.deep_timeout
            if not scan and args.unrolled_timeout:
                timeout = args.unrolled_timeout
            res = run_child(cmd, dict(os.environ), timeout, args.mem_limit_gib)
            row = {"model": name, "scan_units": scan, "remat": remat, "batch": args.batch[0],
                   "image_size": size, "dtype": args.dtypes[0], **res}
            print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def table_deep(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``bench_deep``'s rows."""
    lines = ["| model | batch | px | scan_units | remat | init s | compile s | first step s | "
             "steady ms/step | XLA step mem GiB | peak RSS GiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['image_size']} | {r['scan_units']} | "
            f"{r['remat']} | {fmt(r.get('init_s'))} | {fmt(r.get('compile_s'))} | "
            f"{fmt(r.get('first_step_s'), '.2f')} | {fmt(r.get('ms_per_step'))} | "
            f"{fmt(r.get('xla_step_memory_gib'), '.2f')} | {fmt(r.get('max_rss_gib'), '.2f')} | "
            f"{r.get('error', '')} |"
        )
    return "\n".join(lines)
