"""Train (or resume) a ResNet from a config file.

    python train.py --config configs/quickstart.py --workdir runs/quickstart
    python train.py --config configs/resnet50.py --workdir runs/r50 --config.global_batch_size=1024

Running the same command again resumes from the newest checkpoint in --workdir. The last line
on stdout is ``final: {json}`` (step, eval_top1, eval_top5, wall_s, ...). Multi-host: on TPU VMs
pass --multihost on every worker; elsewhere pass --coordinator_address/--num_processes/
--process_id to each process. If a process is lost, the others stop within
--heartbeat_timeout_seconds (+10 s) with one ``error:`` line and exit status 75; the same
command resumes. See docs/training.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _standalone(name: str):
    """resnet_jax/training/<name>.py by itself (standard library only): the supervising process
    stays light and can re-execute itself before JAX starts (importing it through its packages
    would load JAX and TensorFlow)."""
    spec = importlib.util.spec_from_file_location(
        f"_resnet_jax_{name}", os.path.join(HERE, "resnet_jax", "training", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peers = _standalone("peers")
host = _standalone("host")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a config file, e.g. configs/resnet50.py")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    parser.add_argument(
        "--multihost",
        action="store_true",
        help="call jax.distributed.initialize() with auto-detection (TPU VM pods, SLURM)",
    )
    parser.add_argument("--coordinator_address", default="", help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=0)
    parser.add_argument("--process_id", type=int, default=-1)
    parser.add_argument(
        "--heartbeat_timeout_seconds",
        type=int,
        default=peers.DEFAULT_HEARTBEAT_TIMEOUT_S,
        help="multi-process: a process silent this long is declared lost, and every other one "
        "stops with one error line (JAX's default, suits TPU pods)",
    )
    parser.add_argument(
        "--stop_after_steps",
        type=int,
        default=0,
        help="save and exit at this step; the same command without it continues",
    )
    args, rest = parser.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r} (config overrides: --config.key=value)")
        if "=" not in item:
            if i + 1 >= len(rest):
                parser.error(f"{item} needs a value")
            item, i = f"{item}={rest[i + 1]}", i + 1
        overrides.append(item)
        i += 1
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(argv)
    if (args.coordinator_address or args.multihost) and not os.environ.get(peers.WORKER_ENV):
        # A lost peer makes JAX abort this process from C++: train in a child, report one line.
        return peers.supervise(
            [os.path.abspath(__file__), *argv], process_id=args.process_id,
            num_processes=args.num_processes, heartbeat_timeout_s=args.heartbeat_timeout_seconds,
        )
    from resnet_jax.training.config import ConfigError, load_config
    from resnet_jax.training.xla_flags import apply_xla_flags

    try:
        config = load_config(args.config, overrides)
        apply_xla_flags(config)  # before JAX starts: XLA reads $XLA_FLAGS once
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax

    if args.coordinator_address:
        # Explicit multi-process (multi-node GPU, or local CPU processes for testing).
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
            heartbeat_timeout_seconds=args.heartbeat_timeout_seconds,
        )
    elif args.multihost:
        # TPU VM pods, SLURM, ...: detected from the environment.
        jax.distributed.initialize(heartbeat_timeout_seconds=args.heartbeat_timeout_seconds)

    from resnet_jax.checkpoint import (
        CheckpointDamagedError,
        CheckpointMismatchError,
        CheckpointSaveError,
        NoUsableCheckpointError,
        is_disk_full,
    )
    from resnet_jax.data import DataError
    from resnet_jax.fs import WorkdirError
    from resnet_jax.training.loop import TrainingDivergedError, train_and_evaluate
    from resnet_jax.training.pretrained import PretrainedError

    bad_input = (
        DataError, CheckpointMismatchError, CheckpointSaveError, PretrainedError, ConfigError,
        WorkdirError,  # e.g. gs://... without credentials, or an unknown scheme
        NoUsableCheckpointError, CheckpointDamagedError,
    )
    try:
        summary = train_and_evaluate(config, args.workdir, stop_after_steps=args.stop_after_steps)
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except bad_input as e:  # bad input: say what and how to fix it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # TensorFlow's summary writer reports ENOSPC as its own error type
        if not is_disk_full(e):
            raise
        print(f"error: disk full while writing to {args.workdir}; free space and run the same "
              "command again to resume from the last checkpoint", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print("final: " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    # On a Linux CPU, start over with huge pages for malloc and tcmalloc where installed (both
    # read only at process start): XLA:CPU's per-step scratch buffer then costs few page faults.
    host.reexec_with_fast_malloc([os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit(main())
