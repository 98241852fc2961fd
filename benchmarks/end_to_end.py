"""End to end vs synthetic: does the input pipeline + training loop keep up with the step?

Trains ``--model`` on the real CIFAR-10 images (../shared/datasets, extracted to a temporary
directory unless --data_dir is given) through ``resnet_jax.training.train_and_evaluate``, the
code behind train.py, and times the steps after warm-up with a per-step hook. Side by side, in
the same process, it times the same compiled kind of step on one device-resident batch
(synthetic: no input pipeline, no loop), before and after the end-to-end run. Reports both
images/s, their ratio (issue target: >= 0.9) and the loop's host overhead per step.

    python benchmarks/end_to_end.py [--model resnet20] [--batch 128] [--steps 40] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

from resnet_jax import data  # noqa: E402
from resnet_jax.data import testing  # noqa: E402
from resnet_jax.training import build, optim, recipes, train_and_evaluate  # noqa: E402
from resnet_jax.training.parallel import DataParallel  # noqa: E402
from resnet_jax.training.step import (  # noqa: E402
    create_train_state,
    make_train_step,
)


def config_for(args: argparse.Namespace, data_dir: str):
    c = recipes.cifar10(args.model)
    c.dataset, c.data_dir = "folder", data_dir
    c.global_batch_size = args.batch
    c.eval_batch_size = 4 * args.batch
    # One step more than timed: the last step also evaluates and saves, which is not per-step work.
    c.num_train_steps = args.warmup + args.steps + 1
    c.eval_every_epochs = 0.0  # evaluate once, after the timed steps
    c.log_every_steps = 10
    c.checkpoint_every_steps = 10**9  # one checkpoint, at the end
    c.progress_bar = "off"
    if args.threads:
        c.dataset_options.threads = args.threads  # tf.data's private thread pool
    return c


def synthetic(config, batch: dict, steps: int, warmup: int, prepare=None) -> list[float]:
    """Seconds per step of the loop's step on one device-resident batch (chunks of ``steps``)."""
    model = build.create_model(config, 10, "float32")
    lr_fn = optim.create_learning_rate_fn(config, 390)
    tx = optim.create_optimizer(config, lr_fn)
    dp = DataParallel(config.parallel)
    state = dp.init_state(lambda: create_train_state(
        model, tx, jax.random.PRNGKey(0), (config.image_size,) * 2 + (3,)))
    metrics = dp.init_metrics()
    step = dp.train_step(make_train_step(model, tx, prepare=prepare))
    device_batch = dp.shard_batch(batch)
    for _ in range(warmup):
        state, metrics = step(state, metrics, device_batch)
    jax.block_until_ready(state)
    chunks = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, metrics, device_batch)
        jax.block_until_ready(state)
        chunks.append((time.perf_counter() - t0) / steps)
    return chunks


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps (per synthetic chunk: 1/3)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data_dir", default="", help="CIFAR-10 folder (train/<class>/, test/...)")
    p.add_argument("--threads", type=int, default=0,
                   help="tf.data threads of the training run (0: one per core)")
    p.add_argument("--out", default="", help="JSON results file")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or str(testing.extract_subset(
            testing.CIFAR10_ARCHIVE, Path(tmp) / "cifar10", per_class=None))
        config = config_for(args, data_dir)
        ds = data.create_dataset("folder", "train", data_dir=data_dir, global_batch_size=args.batch,
                                 train=True, augment="cifar", image_size=32,
                                 normalization="per_pixel_mean", dtype="uint8")
        it = iter(ds)
        batch = next(it)
        # Input pipeline alone: how fast it can feed, with nothing consuming on the device.
        t0 = time.perf_counter()
        for _ in range(20):
            next(it)
        pipeline_ips = 20 * args.batch / (time.perf_counter() - t0)

        chunk = max(1, args.steps // 3)
        prepare = build.device_prepare(ds)  # the loop's own on-device input tail
        before = synthetic(config, batch, chunk, args.warmup, prepare)
        stamps: list[float] = []

        def hook(step: int, state) -> None:
            if step in (args.warmup, args.warmup + args.steps):
                jax.block_until_ready(state.params)  # time whole steps, not dispatches
            stamps.append(time.perf_counter())

        train_and_evaluate(config, str(Path(tmp) / "run"), hooks=[hook])
        e2e_step = (stamps[args.warmup + args.steps - 1] - stamps[args.warmup - 1]) / args.steps
        after = synthetic(config, batch, chunk, args.warmup, prepare)

    synth_step = statistics.median(before + after)
    result = {
        "model": args.model, "batch": args.batch, "timed_steps": args.steps,
        "tf_data_threads": args.threads or os.cpu_count(),
        "backend": jax.default_backend(), "devices": jax.device_count(),
        "synthetic_ms_per_step": 1e3 * synth_step,
        "synthetic_chunks_ms": [round(1e3 * s, 1) for s in before + after],
        "end_to_end_ms_per_step": 1e3 * e2e_step,
        "synthetic_images_per_s": args.batch / synth_step,
        "end_to_end_images_per_s": args.batch / e2e_step,
        "ratio": synth_step / e2e_step,
        "host_overhead_ms_per_step": 1e3 * (e2e_step - synth_step),
        "pipeline_alone_images_per_s": pipeline_ips,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
