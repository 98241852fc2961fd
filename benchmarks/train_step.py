"""Train-step benchmark: compile time, ms/step, images/s, memory and MFU of the real train step.

The JAX side is what ``train.py`` runs: ``make_train_step`` wrapped by ``DataParallel("shard_map")``
(sync BN over the axis ``"batch"``, donated state), with the library's optimizer
(``resnet_jax.training.optim.create_optimizer``: SGD momentum 0.9, weight decay 1e-4) and
cross-entropy, on synthetic data already on the device. Timings are medians of repeated timed
chunks after warm-up, each chunk ending in ``block_until_ready``; compared implementations are
timed in the same process, alternating (A B A B ...), so machine load affects both alike.

    python benchmarks/train_step.py --models resnet20 --batch 128 --dtypes float32,bfloat16
    python benchmarks/train_step.py --models resnet20 --batch 128 --compare torch
    python benchmarks/train_step.py --models resnet50 --batch 8 --image_size 112 \\
        --compare flax_example
    python benchmarks/train_step.py --models resnet20 --batch 128 --compare conv_xla
    python benchmarks/train_step.py --xla_sweep --models resnet20 --batch 128
    python benchmarks/train_step.py --deep [--deep_timeout 300]
    python benchmarks/train_step.py --processes --models resnet20 --batch 128
    python benchmarks/train_step.py --processes --models seresnext50d_32x4d --activation mish \\
        --self_attention --batch 64 --image_size 128 --dtypes float32

``--out results.json`` writes every number; ``--write-docs`` replaces this mode's section of
docs/benchmarks.md with the table, the exact command and the machine.

This file parses the flags and dispatches; the modes live next to it: step_main.py (the main
table and ``--compare``, with step_torch.py for PyTorch), step_sweep.py (``--xla_sweep``),
step_deep.py (``--deep``), step_processes.py (``--processes``: JAX and PyTorch each in
its own process, with and without huge-page malloc), step_child.py (``--_child``: one
measurement in a fresh process), step_common.py (the step, timing, docs) and machine.py (the
machine and its peak FLOP/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    machine,
    step_child,
    step_deep,
    step_main,
    step_processes,
    step_sweep,
)
from benchmarks.step_common import DOCS, write_docs  # noqa: E402
from resnet_jax.models.blocks import NONLINEARITIES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of every mode (the same flags since before the split)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv: Callable[[str], list[str]] = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--models", type=csv, default=None, help="comma-separated (resnet20)")
    p.add_argument("--batch", type=lambda s: [int(x) for x in csv(s)], default=[128])
    p.add_argument("--dtypes", type=csv, default=["float32", "bfloat16"])
    p.add_argument("--image_size", type=int, default=0, help="default: 32 CIFAR, 224 ImageNet")
    p.add_argument("--compare", choices=["torch", "flax_example", "conv_xla"], default=None,
                   help="conv_xla: the same model with conv_impl='xla' (lax's conv backward)")
    p.add_argument("--conv_impl", choices=["auto", "xla", "cpu_fast", "onednn"], default="auto",
                   help="the model's conv_impl (convolution backward pass)")
    p.add_argument("--activation", choices=sorted(NONLINEARITIES), default="relu",
                   help="the model's nonlinearity (model_kwargs.activation); --processes only")
    p.add_argument("--self_attention", action="store_true",
                   help="fastai's self-attention layer (model_kwargs.self_attention); "
                        "--processes only")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min_seconds", type=float, default=1.0, help="length of a timed chunk")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak override")
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--write-docs", dest="write_docs", action="store_true",
                   help=f"replace this mode's section of {DOCS.relative_to(ROOT)}")
    p.add_argument("--xla_sweep", action="store_true", help="XLA_FLAGS sets, one process each")
    p.add_argument("--xla_flag_sets", type=lambda s: s.split(";"), default=None,
                   help="';'-separated XLA_FLAGS sets (the first is the baseline)")
    p.add_argument("--sweep_rounds", type=int, default=2)
    p.add_argument("--deep", action="store_true",
                   help="resnet50/resnet110/preact_resnet1001/resnet1202 (or --models)")
    p.add_argument("--deep_timeout", type=float, default=300.0)
    p.add_argument("--unrolled_timeout", type=float, default=0.0,
                   help="timeout of scan_units=False configurations (default: --deep_timeout)")
    p.add_argument("--deep_skip", type=lambda s: {
        (m, bool(int(sc)), bool(int(rm))) for m, sc, rm in (x.split(":") for x in csv(s))
    }, default=set(), help="model:scan:remat,... configurations to leave out")
    p.add_argument("--mem_limit_gib", type=float, default=12.0,
                   help="--deep: address-space cap of each child process, 0 for none (virtual "
                        "memory, far above the resident size; --processes children run uncapped)")
    p.add_argument("--steady_steps", type=int, default=3)
    p.add_argument("--processes", action="store_true",
                   help="JAX and PyTorch in separate fresh processes, alternating, each with "
                        "and without GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
    p.add_argument("--rounds", type=int, default=2, help="rounds of --processes")
    p.add_argument("--_child", choices=["jax", "deep", "torch"], default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--scan", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--remat", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.activation != "relu" or args.self_attention) and not (args.processes or args._child):
        p.error("--activation and --self_attention are options of --processes")
    args.models_given = args.models is not None
    if args.models is None:
        args.models = ["resnet20"]
    if args.deep and args.batch == [128]:
        args.batch = [8]
    if args.deep and args.dtypes == ["float32", "bfloat16"]:
        args.dtypes = ["float32"]
    return args


def main(argv: list[str] | None = None) -> None:
    """Runs the mode the flags ask for, prints its table, writes --out and --write-docs."""
    args = parse_args(argv)
    if args._child:
        step_child.child(args)
        return
    info = machine.machine()
    command = "python benchmarks/train_step.py " + shlex.join(sys.argv[1:] if argv is None
                                                               else argv)
    env_flags = os.environ.get("XLA_FLAGS", "").strip()
    if env_flags:
        command = f"XLA_FLAGS={shlex.quote(env_flags)} {command}"
    if args.deep:
        # One section per model list, so deep runs split over invocations keep each other.
        tag = "-".join(args.models) if args.models_given else "all"
        section, rows = f"deep:{tag}", step_deep.bench_deep(args)
        body = step_deep.table_deep(rows)
    elif args.processes:
        section, rows = "processes", step_processes.bench_processes(args)
        body = step_processes.table_processes(rows)
    elif args.xla_sweep:
        section, rows = "xla_sweep", step_sweep.bench_xla_sweep(args)
        body = step_sweep.table_sweep(rows)
    else:
        section, rows = args.compare or "main", step_main.bench_main(args)
        body = step_main.table_main(rows, args.compare)
    print(body)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": command, "machine": info,
                                              "rows": rows}, indent=2, default=str))
    if args.write_docs:
        write_docs(section, command, info, body)


if __name__ == "__main__":
    main()
