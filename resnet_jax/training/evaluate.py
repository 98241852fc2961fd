"""Evaluate a checkpoint (or torchvision weights) on a split; prints top-1/top-5.

    python -m resnet_jax.training.evaluate --workdir runs/quickstart
    python -m resnet_jax.training.evaluate --workdir runs/r50 --view ten_crop --step best
    python -m resnet_jax.training.evaluate --torchvision resnet50.pth --model resnet50 \
        --dataset imagenet2012 --split validation --image_size 224

Views: "center" (single crop), "ten_crop" (2015 paper Table 3) and "multi_scale" (fully
convolutional at several scales, Table 4); the softmax is averaged over views. The last line
is ``result: {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import ml_collections

from resnet_jax.training.config import apply_override, default_config
from resnet_jax.training.step import DataParallel, make_eval_step


def load_run(workdir: str, step: str = "latest") -> tuple[ml_collections.ConfigDict, Any, int]:
    """(config, variables as numpy, step) of a checkpoint in ``<workdir>/checkpoints``."""
    from resnet_jax.checkpoint import Checkpointer, load_numpy

    directory = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(directory, read_only=True, async_save=False)
    if step == "latest":
        chosen = ckpt.latest_step()
    elif step == "best":
        chosen = ckpt.best_step()
    else:
        chosen = int(step)
    ckpt.close()
    if chosen is None:
        raise FileNotFoundError(f"no {step} checkpoint in {directory}")
    state, meta = load_numpy(directory, chosen)
    config = default_config()
    config.update_from_flattened_dict(_flatten(meta["config"]))
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    return config, variables, chosen


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _flatten(v, f"{prefix}{k}.")
            if sub:
                out.update(sub)
            else:
                out[f"{prefix}{k}"] = ml_collections.ConfigDict()
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def run_eval(
    config: ml_collections.ConfigDict,
    variables: Any,
    *,
    split: str,
    view: str,
    batch_size: int,
    parallel: str = "shard_map",
) -> dict[str, float]:
    """Top-1/top-5/loss of ``variables`` on ``split`` with the given view."""
    from resnet_jax import data
    from resnet_jax.training.loop import create_model, evaluate

    ds = data.create_dataset(
        config.dataset,
        split,
        global_batch_size=batch_size,
        train=False,
        image_size=config.image_size,
        eval_view=view,
        data_dir=config.data_dir or None,
        seed=config.seed,
        **config.dataset_options.to_dict(),
    )
    model = create_model(config, ds.num_classes, "float32")
    dp = DataParallel(parallel)
    eval_step = dp.eval_step(make_eval_step(model))
    return evaluate(eval_step, dp.replicate(variables), ds, dp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", help="a training run's workdir")
    p.add_argument("--step", default="latest", help="latest | best | a step number")
    p.add_argument("--torchvision", help="a torchvision state_dict (.pth) instead of --workdir")
    p.add_argument("--model", help="model name (with --torchvision)")
    p.add_argument("--dataset", help="dataset name (default: the run's)")
    p.add_argument("--data_dir", help="dataset directory (default: the run's)")
    p.add_argument("--split", help="split (default: the run's eval split)")
    p.add_argument("--image_size", type=int, help="image size (default: the run's)")
    p.add_argument("--view", default="center", choices=["center", "ten_crop", "multi_scale"])
    p.add_argument("--batch_size", type=int, default=0, help="global batch (default: the run's)")
    args = p.parse_args(argv)
    if bool(args.workdir) == bool(args.torchvision):
        p.error("pass exactly one of --workdir and --torchvision")
    if args.workdir:
        config, variables, step = load_run(args.workdir, args.step)
        source = f"{args.workdir} step {step}"
    else:
        import torch

        import resnet_jax

        if not args.model:
            p.error("--torchvision needs --model")
        state_dict = torch.load(args.torchvision, map_location="cpu")
        variables = jax.tree.map(
            lambda x: jax.device_get(x), resnet_jax.from_torchvision(args.model, state_dict)
        )
        config = default_config()
        config.model = args.model
        source = args.torchvision
    for key, value in (
        ("dataset", args.dataset),
        ("data_dir", args.data_dir),
        ("eval_split", args.split),
        ("image_size", args.image_size),
    ):
        if value is not None:
            apply_override(config, f"{key}={value}")
    batch = args.batch_size or config.eval_batch_size or config.global_batch_size
    batch = max(batch // jax.device_count(), 1) * jax.device_count()
    result = run_eval(config, variables, split=config.eval_split, view=args.view, batch_size=batch)
    result.update(source=source, split=config.eval_split, view=args.view, model=config.model)
    print(f"{config.model} on {config.dataset}/{config.eval_split} ({args.view}, {source}):")
    print(f"  top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
          f"({int(result['num_examples'])} images)")
    print("result: " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
