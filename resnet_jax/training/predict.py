"""Top-5 classes for image files with a trained checkpoint.

    python -m resnet_jax.training.predict --workdir runs/quickstart digit.png cat.jpg
    python -m resnet_jax.training.predict --weights torchvision:resnet50 cat.jpg

Needs only the workdir: the class names, evaluation preprocessing (centre view, resize method)
and the normalisation used in training are read from the checkpoint, so a run copied to
another machine predicts without its training data. With ``--weights`` (named pretrained
weights, ``resnet_jax.weights``), the ImageNet-1k class names and the source's preprocessing.
Prints one line per image and, last, ``predictions: {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from resnet_jax.inference import InferenceSpec, RunError, load_run


def preprocess(spec: InferenceSpec, paths: list[str]) -> np.ndarray:
    """[n, S, S, 3] float32: the run's eval centre view of each file, normalised as in training
    (the same tf.data functions as the evaluation stream)."""
    import tensorflow as tf

    from resnet_jax.data import CorruptImageError, eval_views, normalizer_from_stats

    normalize = normalizer_from_stats(spec.normalization)
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise RunError(f"image file {path!r} does not exist")
        try:
            img = eval_views.center(
                tf.io.read_file(path), spec.image_size, spec.crop_fraction, spec.resize_method
            )
        except (tf.errors.InvalidArgumentError, ValueError):
            raise CorruptImageError(
                f"{path!r} cannot be decoded as an image (JPEG, PNG, BMP or GIF)"
            ) from None
        images.append(np.asarray(normalize(img), np.float32))
    return np.stack(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--workdir", help="a training run's workdir (or PATH@STEP)")
    which.add_argument("--weights", help="named pretrained weights, e.g. torchvision:resnet50, "
                                         "timm:resnet50.a1_in1k (ImageNet-1k classes)")
    p.add_argument("--step", default="latest", help="latest | best | a step number")
    p.add_argument("--inference_weights", choices=("raw", "ema"),
                   help="the run's trained weights or their EMA (default: the run's "
                        "recorded config.inference_weights)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    from resnet_jax.data import DataError
    from resnet_jax.errors import PretrainedError
    from resnet_jax.weights import WeightsError

    try:
        if args.weights:
            from resnet_jax.weights import pretrained

            net = pretrained(args.weights)
            spec, model, variables = net.spec, net.model, net.variables
        else:
            run = load_run(args.workdir, args.step, args.inference_weights)
            spec, model, variables = run.spec, run.model(), run.variables
        images = preprocess(spec, args.images)
    except (RunError, DataError, PretrainedError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = spec.class_names
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float32)))
    out = []
    for path, pr in zip(args.images, probs, strict=True):
        top = np.argsort(-pr, kind="stable")[: args.top]
        preds = [{"class": names[i], "index": int(i), "prob": float(pr[i])} for i in top]
        out.append({"image": path, "top": preds})
        print(f"{path}: " + ", ".join(f"{d['class']} {d['prob']:.3f}" for d in preds))
    print("predictions: " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
