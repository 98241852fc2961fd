"""Top-5 classes for image files with a trained checkpoint.

    python -m resnet_jax.training.predict --workdir runs/quickstart digit.png cat.jpg

Images get the run's evaluation preprocessing (centre view, the dataset's normalisation).
Prints one line per image and, last, ``predictions: {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np


def preprocess(config, paths: list[str]) -> np.ndarray:
    """[n, H, W, 3] float32: the eval centre view of each file, normalised as in training."""
    import tensorflow as tf

    from resnet_jax import data
    from resnet_jax.data import eval_views

    opts = data.Options(**config.dataset_options.to_dict())
    # The same normalisation as the training/eval stream (statistics of the training split).
    normalize = data.normalizer(
        config.dataset, config.data_dir or None, config.image_size, config.eval_split, opts
    )
    crop = opts.crop_fraction or eval_views.default_crop_fraction(config.image_size)
    images = []
    for path in paths:
        img = eval_views.center(
            tf.io.read_file(path), config.image_size, crop, opts.resize_method
        )
        images.append(np.asarray(normalize(img), np.float32))
    return np.stack(images)


def class_names(config) -> list[str]:
    from resnet_jax import data

    ds = data.create_dataset(
        config.dataset,
        config.eval_split,
        global_batch_size=jax.device_count(),
        train=False,
        image_size=config.image_size,
        data_dir=config.data_dir or None,
        **config.dataset_options.to_dict(),
    )
    return ds.class_names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", default="latest", help="latest | best | a step number")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)

    from resnet_jax.training.evaluate import load_run
    from resnet_jax.training.loop import create_model

    config, variables, _ = load_run(args.workdir, args.step)
    names = class_names(config)
    model = create_model(config, len(names), "float32")
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, preprocess(config, args.images)
    )
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float32)))
    out = []
    for path, pr in zip(args.images, probs, strict=True):
        top = np.argsort(-pr)[: args.top]
        preds = [{"class": names[i], "index": int(i), "prob": float(pr[i])} for i in top]
        out.append({"image": path, "top": preds})
        print(f"{path}: " + ", ".join(f"{d['class']} {d['prob']:.3f}" for d in preds))
    print("predictions: " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
