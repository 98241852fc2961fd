"""Export a trained run for serving: a TF SavedModel and a ``jax.export`` artifact.

    python -m resnet_jax.export --workdir runs/quickstart --out exports/quickstart
    python -m resnet_jax.export --workdir runs/r50 --step best --out exports/r50-best

Writes, into ``--out`` (which must not exist or be empty):

* ``saved_model/``: TF SavedModel. Signature ``serving_default``: ``images``: uint8
  ``[batch, height, width, 3]`` (any batch, height and width) -> ``{"probabilities": float32
  [batch, num_classes]}``. It preprocesses like ``python -m resnet_jax.training.predict`` (the
  run's evaluation centre view): centre square of ``crop_fraction`` x the shorter side, resized
  to ``image_size`` with ``tf.image.resize(method=resize_method, antialias=False)``, / 255 (an
  ``image_size`` square image with ``crop_fraction == 1`` is only cast and divided by 255, as in
  the input pipeline), then the run's normalisation, the network (``train=False``) and a float32
  softmax. The weights are ``tf.Variable``\\ s; the network is ``jax2tf`` native serialization
  (StableHLO, lowered for CPU, CUDA and TPU), so serving needs TensorFlow only.
* ``model.jax_exported``: ``jax.export`` serialization of :func:`serving_fn` (weights baked in):
  uint8 ``[b, image_size, image_size, 3]`` (any ``b``; no crop/resize) -> float32
  probabilities ``[b, num_classes]``. Load with JAX alone:
  ``jax.export.deserialize(open(p, "rb").read()).call(images)``.
* ``class_names.json`` (the class of each output column) and ``inference.json`` (the run's
  :class:`~resnet_jax.inference_spec.InferenceSpec`).

The export is written into a hidden sibling directory and renamed to ``--out`` at the end, so a
failed or interrupted export never leaves a half-written ``--out``. Prints ``exported: {json}``;
errors are one ``error: ...`` line on stderr and exit code 2. See docs/export.md.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.inference import Run, RunError, load_run

SAVED_MODEL = "saved_model"
JAX_EXPORTED = "model.jax_exported"
CLASS_NAMES = "class_names.json"
INFERENCE = "inference.json"
# Serving targets the artifacts are lowered for (lowering needs no such device here).
PLATFORMS = ("cpu", "cuda", "tpu")


class ExportError(ValueError):
    """The export cannot be written as asked (e.g. ``--out`` already holds something)."""


def _probabilities(run: Run) -> Callable[[Any, jax.Array], jax.Array]:
    """(variables, images uint8 or float [0, 1] at image_size) -> float32 probabilities."""
    # lax's convolutions: the artifacts are lowered for every platform and must not contain the
    # CPU backend's oneDNN custom calls (conv_impl="auto" would use them when tracing on a CPU).
    model = run.model(jnp.float32, conv_impl="xla")
    spec = run.spec

    def fn(variables: Any, images: jax.Array) -> jax.Array:
        logits = model.apply(variables, spec.normalize(images), train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return fn


def serving_fn(run: Run) -> Callable[[jax.Array], jax.Array]:
    """images [b, S, S, 3] (uint8, or float32 in [0, 1]; S = ``run.spec.image_size``) ->
    float32 probabilities [b, num_classes]: the run's normalisation, the network with
    ``train=False`` and a float32 softmax. No crop or resize (see :func:`export_run`)."""
    fn = _probabilities(run)
    variables = jax.tree.map(jnp.asarray, run.variables)
    return lambda images: fn(variables, images)


def _tf_preprocess(images, image_size: int, crop_fraction: float, method: str):
    """uint8 [b, h, w, 3] -> float32 [b, S, S, 3] in [0, 1], as ``eval_views.center``."""
    import tensorflow as tf

    from resnet_jax.data import augment

    shape = tf.shape(images)
    y, x, h, w = augment.center_window(shape[1:3], crop_fraction)

    def crop_resize():  # augment.resize is the pipeline's: tf.image.resize(antialias=False) / 255
        return augment.resize(images[:, y : y + h, x : x + w], image_size, method)

    if crop_fraction != 1.0:
        return crop_resize()
    # eval_views.center's fast path: an S x S image is only cast and divided by 255.
    same = tf.logical_and(tf.equal(shape[1], image_size), tf.equal(shape[2], image_size))
    out = tf.cond(same, lambda: augment.to_unit_float(images), crop_resize)
    out.set_shape([None, image_size, image_size, 3])
    return out


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _write_json(path: str, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _save_tf(run: Run, path: str) -> None:
    """The SavedModel: TF preprocessing, then the jax2tf-converted network on tf.Variables."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    spec = run.spec
    s = spec.image_size
    tf_vars = tf.nest.map_structure(
        lambda a: tf.Variable(np.asarray(a), trainable=False), run.variables
    )
    network = jax2tf.convert(
        _probabilities(run),
        polymorphic_shapes=[None, f"(b, {s}, {s}, 3)"],
        with_gradient=False,
        native_serialization_platforms=PLATFORMS,
    )

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
        autograph=False,
    )
    def serve(images):
        x = _tf_preprocess(images, s, spec.crop_fraction, spec.resize_method)
        return {"probabilities": tf.identity(network(tf_vars, x), name="probabilities")}

    module = tf.Module()
    module._variables = tf.nest.flatten(tf_vars)  # tracked, so saved as variables, not constants
    module.serve = serve
    try:
        tf.saved_model.save(module, path, signatures={"serving_default": serve})
    except tf.errors.OpError as e:  # TF reports write failures as OpErrors: make them OSErrors
        no_space = "no space left" in str(e).lower()
        raise OSError(errno.ENOSPC if no_space else errno.EIO, e.message, path) from e


def _jax_exported(run: Run) -> bytes:
    s = run.spec.image_size
    shape = jax.export.symbolic_shape(f"b, {s}, {s}, 3")
    exported = jax.export.export(jax.jit(serving_fn(run)), platforms=PLATFORMS)(
        jax.ShapeDtypeStruct(shape, jnp.uint8)
    )
    return bytes(exported.serialize())


def _check_out(out_dir: str) -> None:
    is_dir = os.path.isdir(out_dir) and not os.path.islink(out_dir)
    if os.path.lexists(out_dir) and not (is_dir and not os.listdir(out_dir)):
        raise ExportError(
            f"{out_dir} already exists and is not an empty directory; pass a new --out or remove it"
        )


def export_run(run: Run, out_dir: str) -> dict[str, Any]:
    """Writes the SavedModel, the jax.export artifact, class_names.json and inference.json of
    ``run`` into ``out_dir`` (all or nothing; see the module docstring). Raises
    :class:`ExportError` when ``out_dir`` is not new or empty, ``OSError`` when writing fails
    (then nothing is left behind). Returns the paths and the signature."""
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    _check_out(out_dir)
    spec = run.spec
    s = spec.image_size
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # Same filesystem as out_dir, so the final rename is atomic.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make out_dir private
        _write_json(os.path.join(tmp, CLASS_NAMES), list(spec.class_names))
        _write_json(os.path.join(tmp, INFERENCE), spec.to_json())
        _save_tf(run, os.path.join(tmp, SAVED_MODEL))
        _write_bytes(os.path.join(tmp, JAX_EXPORTED), _jax_exported(run))
        _check_out(out_dir)  # someone may have written there meanwhile
        os.rename(tmp, out_dir)  # replaces an empty out_dir too
    except BaseException:  # includes KeyboardInterrupt: never leave the partial directory
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": out_dir,
        "saved_model": os.path.join(out_dir, SAVED_MODEL),
        "jax_exported": os.path.join(out_dir, JAX_EXPORTED),
        "class_names": os.path.join(out_dir, CLASS_NAMES),
        "inference": os.path.join(out_dir, INFERENCE),
        "model": spec.model,
        "step": run.step,
        "num_classes": spec.num_classes,
        "image_size": s,
        "saved_model_signature": {
            "name": "serving_default",
            "inputs": {"images": {"dtype": "uint8", "shape": [None, None, None, 3]}},
            "outputs": {"probabilities": {"dtype": "float32", "shape": [None, spec.num_classes]}},
        },
        "jax_exported_signature": {
            "inputs": [{"dtype": "uint8", "shape": ["b", s, s, 3]}],
            "outputs": [{"dtype": "float32", "shape": ["b", spec.num_classes]}],
        },
        "platforms": list(PLATFORMS),
    }


def _parse_step(step: str) -> str | int:
    if step in ("latest", "best"):
        return step
    if step.isdigit():
        return int(step)
    raise RunError(f"--step {step!r} is not latest, best or a step number")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True, help="a training workdir (holds checkpoints/)")
    p.add_argument("--step", default="latest", help="latest | best | a step number")
    p.add_argument("--inference_weights", choices=("raw", "ema"),
                   help="the run's trained weights or their EMA (default: the run's "
                        "recorded config.inference_weights)")
    p.add_argument("--out", required=True, help="a new (or empty) directory for the export")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF loads: no C++ info lines
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's read-only notices are noise here
    try:
        return _main(args)
    finally:
        absl_logging.set_verbosity(verbosity)


def _main(args: argparse.Namespace) -> int:
    out = os.path.abspath(os.path.expanduser(args.out))
    try:
        _check_out(out)  # fail before the (slower) checkpoint read
        run = load_run(args.workdir, _parse_step(args.step), args.inference_weights)
    except (RunError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = export_run(run, out)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        what = "disk full" if e.errno == errno.ENOSPC else f"could not write ({e.strerror or e})"
        print(
            f"error: {what} while writing the export to {os.path.dirname(out)}; nothing was "
            f"written to {out}; "
            + ("free space and retry" if e.errno == errno.ENOSPC else "fix that and retry"),
            file=sys.stderr,
        )
        return 2
    print("exported: " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
