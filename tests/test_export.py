"""``python -m resnet_jax.export`` on a real (short) quickstart run: the SavedModel and the
``jax.export`` artifact, each loaded in a fresh Python that never imports resnet_jax, give the
JAX model's probabilities on real images (held-out digits; CIFAR-10 JPEGs when the shared archive
is present) at batch sizes never used before; the SavedModel crops and resizes other image
sizes exactly like the input pipeline's centre view; failures exit 2 with one ``error:`` line
and leave nothing behind.

Tolerance: float32 probabilities agree to ``atol=1e-5`` (TF's XLA vs jaxlib's XLA, both on CPU;
the measured max abs difference is printed with ``-s`` and quoted in docs/export.md).
"""

import dataclasses
import errno
import functools
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow as tf

from resnet_jax import export
from resnet_jax.data import eval_views, sources
from resnet_jax.data.testing import CIFAR10_ARCHIVE, extract_subset
from resnet_jax.inference import load_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import train  # noqa: E402  (train.py at the repo root)

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
STEPS = 10
ATOL = 1e-5  # on float32 probabilities

# Fresh interpreters that load an artifact the way a server would, without resnet_jax. argv[1]:
# a JSON list of [artifact, inputs.npz, outputs.npz]; each input array is one batch.
TF_SERVER = """
import json, sys, numpy as np, tensorflow as tf
for artifact, src, dst in json.loads(sys.argv[1]):
    serve = tf.saved_model.load(artifact).signatures["serving_default"]
    with np.load(src) as inputs:
        np.savez(dst, **{k: serve(images=tf.constant(inputs[k]))["probabilities"].numpy()
                         for k in inputs.files})
assert "resnet_jax" not in sys.modules, "serving must need TF only (TF itself imports jax)"
"""
JAX_SERVER = """
import json, sys, numpy as np, jax
for artifact, src, dst in json.loads(sys.argv[1]):
    exported = jax.export.deserialize(open(artifact, "rb").read())
    with np.load(src) as inputs:
        np.savez(dst, **{k: np.asarray(exported.call(inputs[k])) for k in inputs.files})
assert "resnet_jax" not in sys.modules and "tensorflow" not in sys.modules, "JAX only"
"""


def _serve(script: str, jobs: list[tuple[str, dict]], tmp_path) -> list[dict]:
    """Each (artifact, {name: uint8 batch}) through ``script`` in one fresh interpreter."""
    spec = []
    for i, (artifact, inputs) in enumerate(jobs):
        src, dst = str(tmp_path / f"in{i}.npz"), str(tmp_path / f"out{i}.npz")
        np.savez(src, **inputs)
        spec.append([artifact, src, dst])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec)],
        cwd=str(tmp_path),  # not the repo root: resnet_jax must not be imported by accident
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = []
    for _, _, dst in spec:
        with np.load(dst) as out:
            outs.append({k: out[k] for k in out.files})
    return outs


def _reference(run, views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """JAX probabilities (``serving_fn``) of S x S views, uint8 or float in [0, 1]; one batch,
    so one compilation (examples are independent with ``train=False``)."""
    as_float = {
        k: v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v for k, v in views.items()
    }
    probs = np.asarray(jax.jit(export.serving_fn(run))(np.concatenate(list(as_float.values()))))
    splits = np.cumsum([len(v) for v in views.values()])[:-1]
    return dict(zip(views, np.split(probs, splits), strict=True))


def _center_view(encoded: list[bytes], spec) -> np.ndarray:
    """The input pipeline's evaluation view (as predict computes it): float32 [n, S, S, 3]."""
    return np.stack([
        eval_views.center(tf.constant(e), spec.image_size, spec.crop_fraction,
                          spec.resize_method).numpy()
        for e in encoded
    ])  # fmt: skip


def _png(images: np.ndarray) -> list[bytes]:
    return [tf.io.encode_png(img).numpy() for img in images]


@functools.lru_cache
def _images() -> dict:
    """Real images. ``digits``: held-out digits as stored (8 x 8 PNG) and decoded;
    ``square``: the same at exactly 16 x 16 (each pixel repeated 2 x 2); ``big``: 40 x 48
    (pixels repeated 5 x 6); ``cifar``: CIFAR-10 test JPEGs (32 x 32), when the archive exists."""
    png = sources.digits_source("test").encoded[:8]
    digits = np.stack([tf.io.decode_png(e, channels=3).numpy() for e in png])
    out = {
        "digits_png": png,
        "digits": digits,
        "square": np.repeat(np.repeat(digits, 2, axis=1), 2, axis=2),
        "big": np.repeat(np.repeat(digits[:2], 5, axis=1), 6, axis=2),
    }
    if CIFAR10_ARCHIVE.exists():
        import tempfile

        root = extract_subset(CIFAR10_ARCHIVE, tempfile.mkdtemp(), per_class=1, splits=("test",))
        jpegs = [p.read_bytes() for p in sorted(root.rglob("*.jpg"))[:4]]
        out["cifar_jpeg"] = jpegs
        out["cifar"] = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs])
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A real quickstart run (resnet20, digits at 16 px), a few steps long."""
    w = str(tmp_path_factory.mktemp("run"))
    rc = train.main([
        "--config", QUICKSTART, "--workdir", w,
        f"--config.num_train_steps={STEPS}", f"--config.checkpoint_every_steps={STEPS}",
        "--config.eval_every_epochs=0", "--config.progress_bar=off",
        f"--config.log_every_steps={STEPS}",
    ])  # fmt: skip
    assert rc == 0
    return w


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    run = load_run(workdir)
    out = tmp_path_factory.mktemp("export") / "quickstart"
    out.mkdir()  # an existing *empty* --out is fine
    return run, export.export_run(run, str(out))


@pytest.fixture(scope="module")
def tf_served(exported, tmp_path_factory):
    """All SavedModel checks in one fresh TF interpreter (importing TF takes seconds): the
    run's export (crop 1.0, bilinear) and an ImageNet-style variant of its spec (centre 0.875
    crop, bicubic) with the same weights. Returns [(run, inputs, reference, served)]."""
    run, result = exported
    tmp = tmp_path_factory.mktemp("served")
    im = _images()
    cropped = dataclasses.replace(
        run, spec=dataclasses.replace(run.spec, crop_fraction=0.875, resize_method="bicubic")
    )
    cropped_result = export.export_run(cropped, str(tmp / "cropped"))
    # Batches 3 and 5 (neither the export's nor training's); then sizes the SavedModel must
    # crop/resize itself, referenced by the pipeline's centre view of the same pixels.
    inputs = {"b3": im["square"][:3], "b5": im["square"][3:8], "digits": im["digits"][:4],
              "big": im["big"]}  # fmt: skip
    views = {
        "b3": im["square"][:3],
        "b5": im["square"][3:8],
        "digits": _center_view(im["digits_png"][:4], run.spec),
        "big": _center_view(_png(im["big"]), run.spec),
    }
    c_inputs = {"square": im["square"][:2], "digits": im["digits"][:3], "big": im["big"]}
    c_views = {k: _center_view(_png(v), cropped.spec) for k, v in c_inputs.items()}
    if "cifar" in im:
        inputs["cifar"] = c_inputs["cifar"] = im["cifar"]
        views["cifar"] = _center_view(im["cifar_jpeg"], run.spec)  # the JPEG files themselves
        # With a crop < 1 the pipeline decodes JPEGs fused with the crop (decode_and_crop_jpeg),
        # whose pixels can differ from a full decode's; the SavedModel gets decoded pixels.
        c_views["cifar"] = _center_view(_png(im["cifar"]), cropped.spec)
    served = _serve(
        TF_SERVER,
        [(result["saved_model"], inputs), (cropped_result["saved_model"], c_inputs)],
        tmp,
    )
    return [
        (run, inputs, _reference(run, views), served[0]),
        (cropped, c_inputs, _reference(cropped, c_views), served[1]),
    ]


def _compare(inputs, want, got, label) -> None:
    chex.assert_shape([got[k] for k in inputs], [(len(inputs[k]), 10) for k in inputs])
    chex.assert_type([got[k] for k in inputs], np.float32)
    chex.assert_trees_all_close({k: got[k] for k in inputs}, {k: want[k] for k in inputs},
                                rtol=0, atol=ATOL)
    print(f"\n{label}: max abs diff {max(np.abs(got[k] - want[k]).max() for k in inputs):.2e}")


def test_writes_all_files(exported):
    run, result = exported
    out = result["out"]
    assert sorted(os.listdir(out)) == sorted(
        [export.SAVED_MODEL, export.JAX_EXPORTED, export.CLASS_NAMES, export.INFERENCE]
    )
    with open(result["class_names"]) as f:
        assert json.load(f) == list(run.spec.class_names) == [str(i) for i in range(10)]
    with open(result["inference"]) as f:
        assert json.load(f) == json.loads(json.dumps(run.spec.to_json()))
    assert result["num_classes"] == 10 and result["image_size"] == 16
    assert not [n for n in os.listdir(os.path.dirname(out)) if ".partial-" in n]
    # The weights are variables of the SavedModel, not constants folded into its graph.
    reader = tf.train.load_checkpoint(os.path.join(result["saved_model"], "variables", "variables"))
    saved = sum(int(np.prod(s)) for s in reader.get_variable_to_shape_map().values())
    assert saved >= sum(a.size for a in jax.tree.leaves(run.variables))


def test_saved_model_matches_jax(tf_served):
    run, inputs, want, got = tf_served[0]
    _compare(inputs, want, got, "SavedModel vs JAX (crop 1.0, bilinear)")
    # A sanity check that the comparison is not vacuous: different images, different outputs.
    assert np.abs(got["b3"][0] - got["b3"][1]).max() > 1e-3


def test_saved_model_crop_and_resize_follow_the_spec(tf_served):
    run, inputs, want, got = tf_served[1]
    _compare(inputs, want, got, "SavedModel vs JAX (crop 0.875, bicubic)")


def test_jax_exported_matches_jax(exported, tmp_path):
    run, result = exported
    square = _images()["square"]
    inputs = {"b3": square[:3], "b5": square[3:8]}
    [got] = _serve(JAX_SERVER, [(result["jax_exported"], inputs)], tmp_path)
    _compare(inputs, _reference(run, inputs), got, "jax.export vs JAX")


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def test_no_checkpoint_is_one_error_line(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_jax.export", "--workdir", str(empty),
         "--out", str(tmp_path / "out")],
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    [error] = _error_lines(proc.stderr)
    assert "no latest checkpoint" in error and "train first" in error
    assert proc.stdout == "" and sorted(os.listdir(tmp_path)) == ["empty_run"]


def test_existing_out_is_refused(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = export.main(["--workdir", workdir, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(_error_lines(err)) == 1 == len(err.strip().splitlines())
    assert "pass a new --out or remove it" in err
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("where", ["jax_exported", "saved_model"])
def test_disk_full_leaves_nothing(workdir, tmp_path, capsys, monkeypatch, where):
    """ENOSPC while writing the jax.export file (the SavedModel is already in the temporary
    directory by then), or inside TF's SavedModel writer (a TF error, not an OSError)."""
    if where == "jax_exported":
        write = export._write_bytes

        def full(path, data):
            if path.endswith(export.JAX_EXPORTED):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            write(path, data)

        monkeypatch.setattr(export, "_write_bytes", full)
    else:

        def full(*args, **kwargs):
            raise tf.errors.ResourceExhaustedError(None, None, "write: No space left on device")

        monkeypatch.setattr(tf.saved_model, "save", full)
    out = tmp_path / "out"
    rc = export.main(["--workdir", workdir, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(_error_lines(err)) == 1
    assert "disk full" in err and "free space and retry" in err
    assert os.listdir(tmp_path) == []  # neither out nor the temporary directory
