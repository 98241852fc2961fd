"""What the experiments share: CIFAR-10 on disk, the papers' recipe at a chosen budget, training
through the library's own loop, reading runs back, and the report files (JSON, markdown, PNG)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax.data import testing
from resnet_jax.training import recipes

DEFAULT_OUT = "runs/experiments"
CIFAR_CLASSES = 10


class ExperimentError(RuntimeError):
    """An experiment cannot run as asked (missing data, bad arguments)."""


def parse_args(
    name: str,
    doc: str,
    argv: Sequence[str] | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The flags every experiment takes; ``extra(parser)`` adds its own."""
    parser = argparse.ArgumentParser(
        prog=f"python -m resnet_jax.experiments.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="the CPU-sized budget stated in docs/experiments.md")
    parser.add_argument("--out", default=os.path.join(DEFAULT_OUT, name),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--data_dir", default="",
                        help="CIFAR-10 image folder with train/<class>/ and test/<class>/ "
                             "(default: extracted from ../shared/datasets/cifar10-jpg.tar.gz)")
    parser.add_argument("--steps", type=int, default=0, help="override the training steps")
    parser.add_argument("--batch", type=int, default=0, help="override the batch size")
    parser.add_argument("--depths", default="",
                        help="override the depths, comma-separated 6n+2 values (e.g. 8,14)")
    parser.add_argument("--test_images", type=int, default=-1,
                        help="test images used for evaluation (default: all, or 2,000 with "
                             "--quick); a multiple of 10, balanced over the classes")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.depths:
        args.depths = parse_depths(args.depths)
    return args


def parse_depths(text: str) -> list[int]:
    """Comma-separated CIFAR depths; each must be 6n+2 (2015 §4.2: 6n 3x3 layers + stem + fc)."""
    try:
        depths = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise ExperimentError(f"--depths must be integers like 20,56, got {text!r}") from None
    bad = [d for d in depths if d < 8 or (d - 2) % 6]
    if bad or not depths:
        raise ExperimentError(
            f"CIFAR ResNet depths are 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...); "
            f"got {bad or text!r}"
        )
    return depths


def cifar_model(family: str, depth: int) -> tuple[str, dict[str, Any]]:
    """(registered name, model_kwargs) of a CIFAR net of any 6n+2 depth: ``family`` is "resnet"
    (option A shortcuts, 2015 §4.2), "plain" (no shortcuts) or "preact_resnet"."""
    base = {"resnet": "resnet20", "plain": "plain20", "preact_resnet": "preact_resnet110"}[family]
    n = (depth - 2) // 6
    return base, {"stage_sizes": (n, n, n)}


def label(family: str, depth: int, suffix: str = "") -> str:
    pretty = {"resnet": "ResNet", "plain": "plain", "preact_resnet": "pre-act ResNet"}[family]
    return f"{pretty}-{depth}{suffix}"


# --------------------------------------------------------------------------------------------
# Data


def cifar10_root(args: argparse.Namespace, test_images: int | None) -> str:
    """An image-folder root with the full train split and ``test_images`` test images (None: all
    10,000), extracted once under ``<out>/../data`` unless ``--data_dir`` names one."""
    if args.data_dir:
        root = Path(args.data_dir)
        for split in ("train", "test"):
            if not (root / split).is_dir():
                raise ExperimentError(
                    f"--data_dir {root} has no {split}/ folder; it must hold train/<class>/*.jpg "
                    "and test/<class>/*.jpg (the layout of cifar10-jpg.tar.gz)"
                )
        if test_images is not None:
            raise ExperimentError(
                "--test_images subsets are made from the shared archive; with --data_dir "
                "pass --test_images 0 (all test images) or make the subset folder yourself"
            )
        return str(root)
    archive = testing.CIFAR10_ARCHIVE
    if not archive.is_file():
        raise ExperimentError(
            f"CIFAR-10 not found: expected {archive} (the offline archive of shared/datasets). "
            "Pass --data_dir <folder with train/<class>/ and test/<class>/> instead."
        )
    if test_images is not None and (test_images <= 0 or test_images % CIFAR_CLASSES):
        raise ExperimentError(f"--test_images must be a positive multiple of 10, got {test_images}")
    tag = "cifar10" if test_images is None else f"cifar10-test{test_images}"
    root = Path(args.out).resolve().parent / "data" / tag
    if not (root / ".complete").exists():
        print(f"extracting {archive.name} to {root} ...", flush=True)
        testing.extract_subset(archive, root, per_class=None, splits=("train",))
        per_class = None if test_images is None else test_images // CIFAR_CLASSES
        testing.extract_subset(archive, root, per_class=per_class, splits=("test",))
        (root / ".complete").write_text("ok\n")
    return str(root)


def count_test_images(root: str) -> int:
    """Images of ``root``'s test/ split, counted by the folder source that the runs' evaluation
    reads (its scan is reused when the settings match)."""
    from resnet_jax.data.sources import folder_source

    return len(folder_source(root, "test"))


def test_images_for(args: argparse.Namespace) -> int | None:
    """--test_images: -1 (default) means 2,000 with --quick, else all; 0 means all."""
    if args.test_images == -1:
        return 2_000 if args.quick else None
    return args.test_images or None


# --------------------------------------------------------------------------------------------
# Training


def cifar_config(
    model: str,
    data_dir: str,
    *,
    steps: int,
    batch: int = 128,
    evals: int = 8,
    model_kwargs: dict[str, Any] | None = None,
    warmup_400: bool = False,
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """He et al. 2015 §4.2 on CIFAR-10 (lr 0.1, momentum 0.9, wd 1e-4, pad-crop-flip, per-pixel
    mean) for ``steps`` iterations, with the paper's lr drops at 32k/64k and 48k/64k of the run
    scaled to its length, and ``evals`` evaluations spread over it. Another ``batch`` than the
    paper's 128 scales the learning rate with it (Goyal et al. 2017, §2.1)."""
    c = recipes.cifar10(model, warmup_400=warmup_400)
    c.learning_rate *= batch / c.global_batch_size
    c.warmup_lr *= batch / c.global_batch_size
    c.dataset = "folder"
    c.data_dir = data_dir
    c.global_batch_size = batch
    c.eval_batch_size = 4 * batch  # divisible by the devices whenever the train batch is
    c.num_train_steps = steps
    c.lr_boundaries = (steps * 0.5, steps * 0.75)
    c.model_kwargs = ml_collections.ConfigDict(model_kwargs or {})
    steps_per_epoch = recipes.CIFAR_TRAIN_IMAGES // batch
    eval_every = max(1, steps // max(evals, 1))
    c.eval_every_epochs = eval_every / steps_per_epoch
    c.log_every_steps = max(1, min(100, steps // 50))
    c.checkpoint_every_steps = max(steps, 1)
    c.keep_checkpoints = 1
    c.keep_best = False
    c.progress_bar = "off"
    c.seed = seed
    return c


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains with ``resnet_jax.training.train_and_evaluate`` (resuming a finished or interrupted
    run in ``workdir`` instead of starting over); returns its summary plus the curves."""
    from resnet_jax.training import train_and_evaluate

    summary = train_and_evaluate(config, workdir)
    return {**summary, **read_curves(workdir)}


def read_curves(workdir: str) -> dict[str, list[list[float]]]:
    """{"train": [[step, error], ...], "eval": [[step, error], ...]} from metrics.jsonl (the last
    record per step wins, so a resumed run is not counted twice)."""
    curves: dict[str, dict[int, float]] = {"train": {}, "eval": {}}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            split = rec.get("split")
            if split in curves and "error" in rec:
                curves[split][int(rec["step"])] = float(rec["error"])
    return {k: [[s, e] for s, e in sorted(v.items())] for k, v in curves.items()}


def final_train_error(curve: list[list[float]], fraction: float = 0.1) -> float:
    """Mean mini-batch training error over the last ``fraction`` of the logged steps (the
    paper's thin curves are such running errors; one log interval alone is noisy)."""
    errors = [e for _, e in curve]
    tail = max(1, int(round(len(errors) * fraction)))
    return float(np.mean(errors[-tail:]))


def load_trained(workdir: str) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict]:
    """(model for single-device use, variables, config) of the newest checkpoint in a run."""
    from resnet_jax.inference import load_run

    run = load_run(workdir)
    return run.model(), jax.tree.map(np.asarray, run.variables), run.config


def eval_batch(config: ml_collections.ConfigDict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` test images of ``config``'s data, preprocessed as in its evaluation."""
    from resnet_jax.training import build

    config = config.copy_and_resolve_references()
    config.dataset_options.device_count = 1
    ds = build.create_eval_dataset(config, config.eval_split, batch_size=size)
    batch = next(iter(ds))
    keep = batch["mask"].astype(bool) if "mask" in batch else slice(None)
    return np.asarray(batch["image"][keep]), np.asarray(batch["label"][keep])


# --------------------------------------------------------------------------------------------
# Reports


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    devices = jax.devices()
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores; JAX {jax.__version__} on "
            f"{devices[0].platform} x{len(devices)}")


class Report:
    """Collects an experiment's results and writes ``results.json`` and ``results.md``."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.data: dict[str, Any] = {"experiment": name, "args": vars(args).copy()}
        self.sections: list[str] = []

    def add(self, text: str) -> None:
        self.sections.append(text.rstrip() + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        def fmt(v: Any) -> str:
            return f"{v:.2f}" if isinstance(v, float) else str(v)

        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"

    def claims(self, claims: list[dict[str, Any]]) -> None:
        """Records the paper's claims as checked on this run (raw and as a markdown list)."""
        self.data["claims"] = claims
        self.add("\n".join(f"- {c['claim']}: **{'yes' if c['holds'] else 'no'}** ({c['detail']})"
                           for c in claims))

    def write(self, command: str) -> Path:
        wall = time.time() - self.t0
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.data.update(command=command, machine=machine(), wall_s=round(wall, 1), date=stamp)
        with open(self.out / "results.json", "w") as f:
            json.dump(self.data, f, indent=1, default=_json_default)
        header = (
            f"# {self.name}\n\n```\n{command}\n```\n\n"
            f"Machine: {machine()}. Wall time: {wall / 60:.1f} min. Date: {stamp}.\n\n"
        )
        md = self.out / "results.md"
        md.write_text(header + "\n".join(self.sections))
        print(f"wrote {md} ({wall / 60:.1f} min)", flush=True)
        return md


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def command_line(name: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m resnet_jax.experiments." + name, *args])


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Runs an experiment's ``main``; bad input ends in one ``error:`` line and exit status 2."""
    from absl import logging as absl_logging

    from resnet_jax.data import DataError
    from resnet_jax.training import ConfigError

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's read-only checkpoint chatter
    try:
        main(argv)
    except (ExperimentError, DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------------------------
# Trained nets shared by the analysis experiments (layer responses, gradient flow)

# --quick budget of the analysis experiments: well under a minute of training per net on 2 CPU
# cores (with compilation, 6 nets in about 5 minutes); --runs analyses longer-trained nets.
QUICK_ANALYSIS_STEPS = 30
QUICK_ANALYSIS_BATCH = 32


def add_runs_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs", default="",
        help="analyse nets already trained here (<runs>/<family><depth>/, e.g. "
             "runs/experiments/degradation/runs) instead of training them",
    )


def trained_net(args: argparse.Namespace, key: str, family: str, depth: int, *,
                steps: int, batch: int, extra: dict[str, Any] | None = None) -> str:
    """The run directory of net ``key`` trained for ``steps`` x ``batch``: from ``--runs`` if
    given, else trained (or found already trained) under ``<out>/../models``."""
    if args.runs:
        workdir = Path(args.runs) / key
        if not (workdir / "checkpoints").is_dir():
            raise ExperimentError(
                f"--runs {args.runs} has no trained {key} ({workdir}/checkpoints is missing); "
                "train it first (e.g. with the degradation experiment) or drop --runs"
            )
        return str(workdir)
    model, kwargs = cifar_model(family, depth)
    data_root = cifar10_root(args, None if args.data_dir else 2_000)
    config = cifar_config(model, data_root, steps=steps, batch=batch, evals=1,
                          model_kwargs={**kwargs, **(extra or {})})
    workdir = Path(args.out).resolve().parent / "models" / f"{key}-{steps}x{batch}"
    print(f"== {key}: {steps} steps of batch {batch} -> {workdir}", flush=True)
    train(config, str(workdir))
    return str(workdir)
