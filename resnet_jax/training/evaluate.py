"""Evaluate runs (one, or an ensemble) or torchvision weights on a split; prints top-1/top-5.

    python -m resnet_jax.training.evaluate --workdir runs/quickstart
    python -m resnet_jax.training.evaluate --workdir runs/r50 --view ten_crop --step best
    python -m resnet_jax.training.evaluate --workdir runs/a --workdir runs/b --workdir runs/c
    python -m resnet_jax.training.evaluate --workdir runs/ft --dataset folder --data_dir my_photos \
        --split val
    python -m resnet_jax.training.evaluate --torchvision resnet50.pth --model resnet50 \
        --dataset folder --data_dir my_imagenet_val --split val --image_size 224 \
        --normalization imagenet
    python -m resnet_jax.training.evaluate --weights torchvision:resnet50 \
        --dataset folder --data_dir my_imagenet_val --split val

Named weights (``--weights``, see ``resnet_jax.weights``) are fetched into the cache once and
evaluated with their source's preprocessing (image size, resize and crop, ImageNet mean/std);
the folder's classes must be ImageNet's in label order (its wnid folders, sorted). A run is
evaluated with what its checkpoint recorded (class names, normalisation, eval
preprocessing), on its own eval split or any split or folder with the same classes. Several
``--workdir``s form an ensemble (2015 paper Sec. 3.4, Table 5): each model's and the ensemble's
(averaged probabilities) top-1/top-5 are reported. Views: "center" (single crop), "ten_crop"
(Table 3) and "multi_scale" (fully convolutional at several scales, Table 4); the softmax is
averaged over views. ``--image_size`` and ``--crop_fraction`` (the centre view's share of the
shorter side) replace the run's recorded ones. The last line is ``result: {json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax.data.normalization import NORMALIZATIONS
from resnet_jax.data.presets import VIEWS
from resnet_jax.inference import Run, RunError, load_run
from resnet_jax.training import build
from resnet_jax.training.config import ConfigError, apply_override, default_config
from resnet_jax.training.parallel import DataParallel
from resnet_jax.training.step import make_ensemble_eval_step, make_eval_step


def accuracy(sums: dict[str, Any]) -> dict[str, float]:
    """Top-1/top-5/loss from an eval step's summed counts (host floats)."""
    s = {k: float(v) for k, v in sums.items()}
    n = max(s["count"], 1.0)
    return {
        "loss": s["loss_sum"] / n,
        "top1": s["top1_sum"] / n,
        "top5": s["top5_sum"] / n,
        "num_examples": s["count"],
    }


def summed(eval_step, variables: Any, batches: Iterable[dict], dp: DataParallel) -> Any:
    """The eval step's sums over every batch, on the host."""
    sums = None
    for batch in dp.device_batches(batches):
        out = eval_step(variables, batch)
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    if sums is None:
        raise ValueError("the eval split yielded no batches")
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), sums)


def run_eval(
    config: ml_collections.ConfigDict,
    variables: Any,
    *,
    split: str,
    view: str,
    batch_size: int,
    spec=None,
    parallel: str = "shard_map",
) -> dict[str, float]:
    """Top-1/top-5/loss of ``variables`` on ``split`` with the given view; with ``spec`` (a
    run's), its recorded classes, normalisation and preprocessing."""
    ds = build.create_eval_dataset(config, split, batch_size=batch_size, view=view, spec=spec,
                                   uint8=True)
    model = spec.create_model() if spec is not None else build.create_model(
        config, ds.num_classes)
    dp = DataParallel(parallel)
    eval_step = dp.eval_step(make_eval_step(model, build.device_prepare(ds)))
    return accuracy(summed(eval_step, dp.replicate(variables), ds, dp))


def run_ensemble(
    runs: list[Run], config: ml_collections.ConfigDict, *, split: str, view: str, batch_size: int
) -> dict[str, Any]:
    """Each run's and the ensemble's metrics on one pass over ``split``."""
    first = runs[0].spec
    for run in runs[1:]:
        if run.spec.class_names != first.class_names:
            raise RunError(
                f"cannot ensemble {runs[0].directory} and {run.directory}: their class lists "
                "differ; an ensemble averages probabilities of the same classes"
            )
        if run.spec.image_size != first.image_size:
            raise RunError(
                f"cannot ensemble {runs[0].directory} (image_size {first.image_size}) and "
                f"{run.directory} ({run.spec.image_size}): the views must be the same images"
            )
    # uint8 pixels in, each model normalises them its own way on the device.
    ds = build.create_eval_dataset(
        config, split, batch_size=batch_size, view=view, spec=first, uint8=True
    )
    dp = DataParallel("shard_map")
    step = make_ensemble_eval_step([r.model() for r in runs], [r.spec.normalize for r in runs])
    eval_step = dp.eval_step(step)
    sums = summed(eval_step, dp.replicate([r.variables for r in runs]), ds, dp)
    return {
        "models": [accuracy(sums[f"model{i}"]) for i in range(len(runs))],
        "ensemble": accuracy(sums["ensemble"]),
    }


def _line(name: str, r: dict[str, float]) -> str:
    return (f"  {name}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
            f"({int(r['num_examples'])} images)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", action="append", default=[],
                   help="a training run's workdir (PATH@STEP for a step); repeat for an ensemble")
    p.add_argument("--step", default="latest", help="latest | best | a step number")
    p.add_argument("--inference_weights", choices=("raw", "ema"),
                   help="the run's trained weights or their EMA (default: the run's "
                        "recorded config.inference_weights)")
    p.add_argument("--torchvision", help="a torchvision state_dict (.pth) instead of --workdir")
    p.add_argument("--weights",
                   help="named pretrained weights instead of --workdir, e.g. torchvision:resnet50, "
                        "torchvision:resnet50.IMAGENET1K_V1, timm:resnet50.a1_in1k")
    p.add_argument("--model", help="model name (with --torchvision)")
    p.add_argument("--dataset", help="dataset name (default: the run's)")
    p.add_argument("--data_dir", help="dataset directory (default: the run's)")
    p.add_argument("--split", help="split (default: the run's eval split)")
    p.add_argument("--image_size", type=int, help="image size (default: the run's)")
    p.add_argument("--crop_fraction", type=float,
                   help="centre view: the shorter side's fraction cropped before resizing to "
                        "--image_size (default: the run's / the weights' source's)")
    p.add_argument("--normalization", choices=NORMALIZATIONS,
                   help="with --torchvision: 'imagenet' for torchvision's ImageNet weights "
                        "(default: the dataset's; --weights: imagenet); runs use their recorded "
                        "normalisation")
    p.add_argument("--view", default="center", choices=VIEWS)
    p.add_argument("--batch_size", type=int, default=0, help="global batch (default: the run's)")
    args = p.parse_args(argv)
    if sum(map(bool, (args.workdir, args.torchvision, args.weights))) != 1:
        p.error("pass --workdir (one or more), --torchvision or --weights")
    if args.crop_fraction is not None and not 0 < args.crop_fraction <= 1:
        p.error(f"--crop_fraction must be in (0, 1], got {args.crop_fraction}")
    if args.normalization and args.workdir:
        p.error("--normalization is for --torchvision; a run uses its recorded normalisation")
    from resnet_jax.data import DataError
    from resnet_jax.errors import PretrainedError
    from resnet_jax.weights import WeightsError

    try:
        return _evaluate(args, p)
    except (RunError, DataError, ConfigError, PretrainedError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _state_dict_weights(
    args: argparse.Namespace, p: argparse.ArgumentParser
) -> tuple[Any, ml_collections.ConfigDict, str]:
    """(variables, config, source) for ``--torchvision FILE`` or ``--weights NAME``."""
    from resnet_jax import weights
    from resnet_jax.models.state_dicts import read_state_dict
    from resnet_jax.models.torchvision import from_torchvision

    config = default_config()
    if args.weights:
        entry = weights.find(args.weights)
        if args.model and args.model != entry.model:
            p.error(f"--weights {entry.name} are {entry.model} weights, not --model {args.model}")
        path, model, source = str(weights.download(entry)), entry.model, entry.name
        config.image_size = entry.image_size  # the source's evaluation preprocessing
        config.dataset_options.normalization = "imagenet"
        config.dataset_options.crop_fraction = entry.crop_fraction
        config.dataset_options.resize_method = entry.resize_method
    else:
        if not args.model:
            p.error("--torchvision needs --model")
        path, model, source = args.torchvision, args.model, args.torchvision
    state_dict = read_state_dict(path)
    variables = jax.device_get(from_torchvision(model, state_dict))
    config.model = model
    if args.normalization:
        config.dataset_options.normalization = args.normalization
    return variables, config, source


def _evaluate(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    runs: list[Run] = []
    if args.workdir:
        runs = [load_run(w, args.step, args.inference_weights) for w in args.workdir]
        config = runs[0].config
        views = {"image_size": args.image_size, "crop_fraction": args.crop_fraction}
        views = {k: v for k, v in views.items() if v is not None}
        for run in runs:
            run.spec = dataclasses.replace(run.spec, **views)
        source = ", ".join(f"{r.directory} step {r.step}" for r in runs)
    else:
        variables, config, source = _state_dict_weights(args, p)
        if args.crop_fraction is not None:
            config.dataset_options.crop_fraction = args.crop_fraction
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
    split, view = config.eval_split, args.view
    print(f"{config.model} on {config.dataset}/{split} ({view}, {source}):")
    if len(runs) > 1:
        result: dict[str, Any] = run_ensemble(runs, config, split=split, view=view,
                                              batch_size=batch)
        for run, r in zip(runs, result["models"], strict=True):
            print(_line(f"{run.directory} step {run.step}", r))
        print(_line(f"ensemble of {len(runs)}", result["ensemble"]))
    else:
        variables = runs[0].variables if runs else variables
        result = run_eval(config, variables, split=split, view=view, batch_size=batch,
                          spec=runs[0].spec if runs else None)
        print(_line("result", result))
    result.update(source=source, split=split, view=view, model=config.model)
    print("result: " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
