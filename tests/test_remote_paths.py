"""Remote workdirs (``gs://`` and any ``tf.io.gfile`` scheme), tested offline on TensorFlow's
in-memory ``ram://`` filesystem; no test here makes a network request.

Checkpoints cannot go to ``ram://`` (orbax writes arrays through tensorstore, whose kvstores
are file/gcs/memory, and etils.epath knows only gs/s3/az/hf), so the end-to-end loop test
redirects the checkpoints directory to a local folder; everything else of the run goes to
``ram://``. Real GCS is not tested here: see docs/remote_paths.md.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import tensorflow as tf

import train
from resnet_jax import fs
from resnet_jax.inference import RunError, checkpoint_dir, load_run
from resnet_jax.training import loop
from resnet_jax.training.metrics import MetricWriter, read_jsonl
from tests.test_train_loop import QUICKSTART, TINY, tiny_config


def _ram() -> str:
    """A fresh ram:// directory (the ram filesystem lives as long as the process)."""
    return f"ram://test-{uuid.uuid4().hex[:10]}/run"


def test_is_remote_and_absolute():
    assert fs.is_remote("gs://bucket/run")
    assert fs.is_remote("ram://x")
    assert not fs.is_remote("runs/r50")
    assert not fs.is_remote("/abs/gs:/b")
    assert not fs.is_remote("C:\\runs")
    assert fs.absolute("gs://bucket/runs/r50") == "gs://bucket/runs/r50"  # not /cwd/gs:/...
    assert fs.absolute("runs/a") == os.path.join(os.getcwd(), "runs", "a")
    assert fs.absolute("~/runs") == os.path.join(os.path.expanduser("~"), "runs")
    assert fs.join("gs://b/run/", "checkpoints") == "gs://b/run/checkpoints"
    assert fs.join("/tmp/run", "a", "b") == os.path.join("/tmp/run", "a", "b")


@pytest.mark.parametrize("where", ["ram", "local"])
def test_fs_round_trip(where, tmp_path):
    root = _ram() if where == "ram" else str(tmp_path / "run")
    sub = fs.join(root, "a", "b")
    assert not fs.exists(root)
    fs.makedirs(sub)
    fs.makedirs(sub)  # exists: no error
    assert fs.isdir(sub) and fs.isdir(root) and fs.exists(sub)
    path = fs.join(sub, "f.txt")
    assert not fs.isdir(path) and not fs.exists(path)
    fs.write_text(path, "one\n")
    fs.append_text(path, "two\n")
    with fs.open_append(path) as f:
        f.write("three\n")
    assert fs.read_text(path) == "one\ntwo\nthree\n"
    fs.write_text(path, "replaced")
    assert fs.read_text(path) == "replaced"
    assert fs.exists(path) and not fs.isdir(path)
    if where == "local":
        assert os.listdir(sub) == ["f.txt"]  # no temporary file left behind


def test_local_paths_do_not_import_tensorflow(tmp_path):
    """Local paths use os/open only: a subprocess without TensorFlow importable still works."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from resnet_jax import fs\n"
        f"d = fs.join({str(tmp_path)!r}, 'x'); fs.ensure_writable_dir(d)\n"
        "p = fs.join(d, 'f'); fs.write_text(p, 'a'); fs.append_text(p, 'b')\n"
        "assert fs.read_text(p) == 'ab' and fs.isdir(d) and fs.exists(p)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _events(directory: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the TensorBoard event files in ``directory``."""
    out: dict[str, list[tuple[int, float]]] = {}
    files = tf.io.gfile.glob(directory + "/events.out.tfevents.*")
    assert files, f"no event file in {directory}"
    for name in files:
        for event in tf.compat.v1.train.summary_iterator(name):
            for v in event.summary.value:
                value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                out.setdefault(v.tag, []).append((event.step, value))
    return out


def test_metric_writer_ram():
    workdir = _ram()
    w = MetricWriter(workdir)
    w.write(1, "train", {"loss": 2.0, "top1": 0.25})
    w.write(2, "train", {"loss": 1.5, "top1": 0.5})
    w.write(2, "eval", {"loss": 1.25, "top1": 0.75})  # eval rows are uploaded at once
    assert [r["split"] for r in read_jsonl(fs.join(workdir, "metrics.jsonl"))] == [
        "train", "train", "eval"
    ]
    w.write(3, "train", {"loss": 1.0, "top1": 0.5})
    w.close()
    rows = read_jsonl(fs.join(workdir, "metrics.jsonl"))
    assert rows[-1] == {"step": 3, "split": "train", "loss": 1.0, "top1": 0.5}
    assert len(rows) == 4
    train_events = _events(fs.join(workdir, "tensorboard", "train"))
    assert train_events["loss"] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert _events(fs.join(workdir, "tensorboard", "eval"))["top1"] == [(2, 0.75)]

    w2 = MetricWriter(workdir, tensorboard=False)  # a resumed run appends to the same file
    w2.write(4, "train", {"loss": 0.5})
    w2.close()
    assert [r["step"] for r in read_jsonl(fs.join(workdir, "metrics.jsonl"))] == [1, 2, 2, 3, 4]


def test_metric_writer_remote_flushes_on_a_timer():
    workdir = _ram()
    w = MetricWriter(workdir, tensorboard=False, remote_flush_s=0.0)
    w.write(1, "train", {"loss": 2.0})
    assert len(read_jsonl(fs.join(workdir, "metrics.jsonl"))) == 1  # flushed before close
    w.close()


def test_train_loop_ram_workdir(tmp_path, monkeypatch):
    """config.json, metrics.jsonl, TensorBoard and summary.json on ram://; checkpoints (orbax
    cannot write ram://) redirected to a local folder by a stand-in Checkpointer."""
    workdir = _ram()
    real = loop.Checkpointer
    seen = []

    def local_checkpointer(directory: str, **kwargs):
        seen.append(directory)
        assert directory == workdir + "/checkpoints"  # the remote string, not /cwd/ram:/...
        return real(str(tmp_path / "checkpoints"), **kwargs)

    monkeypatch.setattr(loop, "Checkpointer", local_checkpointer)
    summary = loop.train_and_evaluate(tiny_config(), workdir)
    assert seen and summary["workdir"] == workdir and summary["step"] == 8
    config = json.loads(fs.read_text(fs.join(workdir, "config.json")))
    assert config["num_train_steps"] == 8
    saved = json.loads(fs.read_text(fs.join(workdir, "summary.json")))
    assert saved["step"] == 8 and saved["workdir"] == workdir
    rows = read_jsonl(fs.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in rows if r["split"] == "eval"] == [8]
    assert [s for s, _ in _events(fs.join(workdir, "tensorboard", "train"))["loss"]] == list(
        range(1, 9)
    )
    assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "8"
    assert not os.path.exists("ram:")  # nothing written to a mangled local path


def test_load_run_remote_paths_without_checkpoints():
    workdir = _ram()
    fs.makedirs(workdir)
    assert checkpoint_dir(workdir) == workdir  # no checkpoints/ inside: the path itself
    fs.makedirs(fs.join(workdir, "checkpoints"))
    assert checkpoint_dir(workdir) == workdir + "/checkpoints"
    with pytest.raises(RunError, match="does not exist"):
        load_run(_ram())


def test_unknown_scheme_is_one_error_line(capsys):
    t0 = time.time()
    rc = train.main(
        ["--config", QUICKSTART, "--workdir", "nosuchfs://bucket/run"]
        + [f"--config.{o}" for o in TINY]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error:")]
    assert rc == 2
    assert len(error_lines) == 1, err
    assert "nosuchfs://bucket/run" in error_lines[0]
    assert "not implemented" in error_lines[0] and "local --workdir" in error_lines[0]
    assert time.time() - t0 < 30
    assert not os.path.exists("nosuchfs:")


def test_ensure_writable_dir_local_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(fs.WorkdirError, match="cannot write to .*file/run"):
        fs.ensure_writable_dir(str(blocker / "run"))


def test_image_folder_on_a_remote_filesystem(tmp_path):
    """An image folder on ram:// (as on gs://) reads through tf.io.gfile and yields exactly the
    batches of the same folder on local disk (real CIFAR-10 JPEGs)."""
    import numpy as np

    from resnet_jax import data
    from resnet_jax.data import testing

    if not testing.CIFAR10_ARCHIVE.is_file():
        pytest.skip("needs ../shared/datasets/cifar10-jpg.tar.gz")
    local = testing.extract_subset(testing.CIFAR10_ARCHIVE, tmp_path / "c", per_class=3)
    remote = _ram()
    for path in sorted(local.rglob("*.jpg")):
        target = fs.join(remote, *path.relative_to(local).parts)
        tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
        tf.io.gfile.copy(str(path), target)
    kw = dict(global_batch_size=10, image_size=32, device_count=1, process_count=1,
              process_index=0)
    assert data.sources.folder_classes(remote) == data.sources.folder_classes(local)
    for train_kw in (dict(train=True, augment="cifar"), dict(train=False)):
        batches = [next(iter(data.create_dataset("folder", "test", data_dir=str(root), **kw,
                                                 **train_kw)))
                   for root in (local, remote)]
        np.testing.assert_array_equal(batches[0]["image"], batches[1]["image"])
        np.testing.assert_array_equal(batches[0]["label"], batches[1]["label"])
    with pytest.raises(data.DataError, match="does not exist"):
        data.create_dataset("folder", "test", data_dir=_ram(), train=False, **kw)
