"""Input-pipeline throughput: resnet_jax.data vs a minimal hand-written tf.data baseline.

Runs every preset on real Imagenette-224 and CIFAR-10 JPEGs from ../shared/datasets (a subset
is extracted to a temporary directory), alternating the two pipelines (A B A B ...) so machine
load affects both alike, and prints a Markdown table. Per-core figures: images/s divided by the
number of CPU cores tf.data may use (os.cpu_count()), and images per CPU-second of the process
(user + system time, which counts only the cores actually used).

    python benchmarks/input_pipeline.py [--seconds 4] [--repeats 2] [--presets inception]
        [--auto-augment rand-m9-mstd0.5-inc1] [--random-erasing 0.25]

``--auto-augment`` / ``--random-erasing`` add those options (``dataset_options``) to our train
presets; the baseline keeps the preset alone, so the ratio shows their cost.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import machine  # noqa: E402
from resnet_jax import data  # noqa: E402
from resnet_jax.data import augment as aug  # noqa: E402
from resnet_jax.data import testing  # noqa: E402

BATCH = 128
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _baseline_map(preset: str, size: int):
    """The same work as the preset, written the plain tf.data way (stateful randomness)."""
    mean = tf.constant(MEAN)
    std = tf.constant(STD)

    def normalize(img):
        return (img - mean) / std

    def flip(img):
        return tf.image.random_flip_left_right(img)

    def fn(encoded, label):
        if preset == "inception":
            shape = tf.image.extract_jpeg_shape(encoded)
            begin, bsize, _ = tf.image.sample_distorted_bounding_box(
                shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
                min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True,
            )  # fmt: skip
            window = tf.stack([begin[0], begin[1], bsize[0], bsize[1]])
            img = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
            img = flip(normalize(tf.image.resize(img, [size, size]) / 255.0))
        elif preset == "resnet_paper":
            shape = tf.image.extract_jpeg_shape(encoded)
            h, w = shape[0], shape[1]
            target = tf.random.uniform([], 256.0 * size / 224, 480.0 * size / 224)
            side = tf.cast(size * tf.cast(tf.minimum(h, w), tf.float32) / target, tf.int32)
            y = tf.random.uniform([], 0, h - side + 1, tf.int32)
            x = tf.random.uniform([], 0, w - side + 1, tf.int32)
            img = tf.io.decode_and_crop_jpeg(encoded, tf.stack([y, x, side, side]), channels=3)
            img = tf.image.resize(img, [size, size]) / 255.0
            alpha = tf.random.normal([3], stddev=0.1)
            img = img + tf.linalg.matvec(
                tf.constant(aug.IMAGENET_EIGVEC), alpha * tf.constant(aug.IMAGENET_EIGVAL)
            )
            img = flip(normalize(img))
        elif preset == "center":
            shape = tf.image.extract_jpeg_shape(encoded)
            h, w = shape[0], shape[1]
            side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * 0.875, tf.int32)
            window = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
            img = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
            img = normalize(tf.image.resize(img, [size, size]) / 255.0)
        elif preset == "cifar":
            img = tf.io.decode_jpeg(encoded, channels=3)
            img = normalize(tf.image.resize(img, [size, size]) / 255.0)
            img = tf.image.pad_to_bounding_box(img, 4, 4, size + 8, size + 8)
            img = flip(tf.image.random_crop(img, [size, size, 3]))
        else:
            raise ValueError(preset)
        return {"image": img, "label": label}

    return fn


def baseline(encoded: list[bytes], labels: np.ndarray, preset: str, size: int, train: bool):
    ds = tf.data.Dataset.from_tensor_slices((encoded, labels))
    ds = ds.shuffle(len(encoded)).repeat() if train else ds.repeat()
    ds = ds.map(_baseline_map(preset, size), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


def ours(root: Path, preset: str, size: int, train: bool, dtype: str = "uint8",
         extras: dict | None = None):  # fmt: skip
    # uint8: what the trainer streams (normalised on the device); float32: normalised on the host.
    kw = dict(data_dir=str(root), global_batch_size=BATCH, image_size=size, mean=MEAN, std=STD,
              device_count=1, process_count=1, process_index=0, cache=True,
              dtype=dtype)  # fmt: skip
    if train:
        ds = data.create_dataset("folder", "train", train=True, augment=preset, **kw,
                                 **(extras or {}))  # fmt: skip
        return iter(ds)
    ds = data.create_dataset("folder", "train", train=False, eval_view="center",
                             crop_fraction=0.875, **kw)  # fmt: skip
    return (b for _ in iter(int, 1) for b in ds)  # repeat the one-pass eval stream


def bytes_per_image(batch: dict) -> float:
    """Host-to-device bytes per image: every array the step receives, over the batch."""
    import jax

    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(batch)) / BATCH


def measure(make_iter, seconds: float) -> tuple[float, float, float]:
    """(images/s wall-clock, images per CPU-second, bytes per image) after a short warm-up."""
    it = make_iter()
    for _ in range(2):
        next(it)
    per_image = bytes_per_image(next(it))
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    n = 0
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += BATCH
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    del it
    return n / wall, n / cpu, per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per pipeline")
    parser.add_argument("--imagenette-per-class", type=int, default=100)
    parser.add_argument("--cifar-per-class", type=int, default=500)
    parser.add_argument("--dtype", default="uint8", choices=["uint8", "float32"],
                        help="our stream's images: uint8 (the trainer's) or host-normalised f32")
    parser.add_argument("--presets", default="inception,resnet_paper,center,cifar",
                        help="comma-separated cases to run (center: the eval view)")
    parser.add_argument("--auto-augment", default="",
                        help="our train presets with this auto_augment (e.g. rand-m9-mstd0.5-inc1)")
    parser.add_argument("--random-erasing", type=float, default=0.0,
                        help="our train presets with this random_erasing probability")
    args = parser.parse_args()
    extras = {k: v for k, v in (("auto_augment", args.auto_augment),
                                ("random_erasing", args.random_erasing)) if v}  # fmt: skip
    host = machine.host()
    cores = host["cores"] or 1  # os.cpu_count(): what tf.data may use
    tmp = Path(tempfile.mkdtemp(prefix="bench_input_"))
    nette = testing.extract_subset(testing.IMAGENETTE_ARCHIVE, tmp / "nette",
                                   per_class=args.imagenette_per_class, splits=("train",))
    cifar = testing.extract_subset(testing.CIFAR10_ARCHIVE, tmp / "cifar",
                                   per_class=args.cifar_per_class, splits=("train",))  # fmt: skip
    cases = [
        ("Imagenette-224", nette, "inception", 224, True),
        ("Imagenette-224", nette, "resnet_paper", 224, True),
        ("Imagenette-224", nette, "center", 224, False),
        ("CIFAR-10", cifar, "cifar", 32, True),
    ]
    cases = [c for c in cases if c[2] in args.presets.split(",")]
    rows = []
    for dataset, root, preset, size, train in cases:
        src = data.pipeline.open_source("folder", "train", str(root), data.Options())
        encoded, labels = src.encoded, src.labels
        results = {"ours": [], "baseline": []}
        for _ in range(args.repeats):
            make_ours = functools.partial(ours, root, preset, size, train, args.dtype, extras)
            make_base = functools.partial(baseline, encoded, labels, preset, size, train)
            results["ours"].append(measure(make_ours, args.seconds))
            results["baseline"].append(measure(make_base, args.seconds))
        # Best of the repeats (by wall-clock rate): the run least disturbed by other load.
        best = {k: max(v) for k, v in results.items()}
        rows.append((dataset, preset, size, len(labels), best["ours"], best["baseline"]))
        o, b = best["ours"][0], best["baseline"][0]
        print(f"{dataset} {preset}: ours {o:.0f} img/s, baseline {b:.0f} img/s, {o / b:.2f}x",
              file=sys.stderr, flush=True)  # fmt: skip

    print(f"\nMachine: {cores}-core CPU ({machine.cpu_name()}), "
          f"Python {host['python']}, TensorFlow {tf.__version__}; "
          f"batch {BATCH}, best of {args.repeats} x {args.seconds:.0f} s runs; ours streams "
          f"{args.dtype}{''.join(f'; {k}={v}' for k, v in extras.items())}.\n")  # fmt: skip
    print("| data | preset | size | images | ours img/s | ours img/s/core | ours img/CPU-s "
          "| baseline img/s | baseline img/s/core | baseline img/CPU-s | ratio (wall) "
          "| ratio (CPU) | bytes/image to device: ours | baseline |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dataset, preset, size, n, (o, o_cpu, o_b), (b, b_cpu, b_b) in rows:
        print(f"| {dataset} | {preset} | {size} | {n} | {o:.0f} | {o / cores:.0f} | {o_cpu:.0f} "
              f"| {b:.0f} | {b / cores:.0f} | {b_cpu:.0f} | {o / b:.2f} "
              f"| {o_cpu / b_cpu:.2f} | {o_b:,.0f} | {b_b:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
