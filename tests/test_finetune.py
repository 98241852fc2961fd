"""Pretrained weights in, fine-tuned, evaluated and predicted from the workdir alone: runs are
self-contained, ``init_from`` (our runs and PyTorch files as people have them), freezing,
ensembles, and the bad-input errors (one ``error:`` line, exit 2, nothing written half).

Real CIFAR-10 images (a few per class) from ../shared/datasets, tiny networks, a few steps.
"""

import contextlib
import io
import json
import shutil
import subprocess

import chex
import numpy as np
import pytest

import resnet_jax
import train
from resnet_jax.checkpoint import load_numpy
from resnet_jax.data import testing
from resnet_jax.inference import load_run
from tests.test_train_loop import QUICKSTART
from tests.test_train_loop import TINY as TRAIN_LOOP_TINY

# The tiny network and schedule of the training-loop tests, 4 steps here.
TINY = TRAIN_LOOP_TINY + ["num_train_steps=4", "log_every_steps=2"]
CLASSES = ["airplane", "automobile", "bird", "cat"]

pytestmark = pytest.mark.skipif(
    not testing.CIFAR10_ARCHIVE.is_file(), reason="needs ../shared/datasets/cifar10-jpg.tar.gz"
)


def _folder(root, classes, per_class=8):
    """An image folder of real CIFAR-10 JPEGs with ``classes`` (train/ and test/)."""
    full = testing.extract_subset(testing.CIFAR10_ARCHIVE, root / "_all", per_class=per_class)
    for split in ("train", "test"):
        for name in classes:
            shutil.copytree(full / split / name, root / split / name)
    shutil.rmtree(full)
    return root


def _train(workdir, data_dir, *extra, capsys=None):
    args = ["--config", QUICKSTART, "--workdir", str(workdir), "--config.dataset=folder",
            f"--config.data_dir={data_dir}", "--config.train_split=train",
            "--config.eval_split=test"]
    args += [f"--config.{o}" for o in TINY] + [f"--config.{o}" for o in extra]
    rc = train.main(args)
    return rc


def _last_json(text, prefix):
    line = [x for x in text.strip().splitlines() if x.startswith(prefix)][-1]
    return json.loads(line[len(prefix):])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 4-class run on real CIFAR-10 images, per-pixel-mean normalised (2015 §4.2)."""
    tmp = tmp_path_factory.mktemp("pre")
    data = _folder(tmp / "data", CLASSES)
    workdir = tmp / "run"
    assert _train(workdir, data, "dataset_options.normalization=per_pixel_mean") == 0
    return workdir, data


def test_run_is_self_contained(pretrained, tmp_path, capsys):
    from resnet_jax.training import evaluate, predict

    workdir, data = pretrained
    run = load_run(str(workdir))
    assert run.spec.class_names == tuple(CLASSES) and run.spec.image_size == 8
    assert run.spec.normalization["kind"] == "per_pixel_mean"
    chex.assert_shape(run.spec.normalization["mean_image"], (8, 8, 3))
    images = sorted(str(p) for p in (data / "test" / "cat").iterdir())[:3]
    images = [str(shutil.copy(p, tmp_path / f"img{i}.jpg")) for i, p in enumerate(images)]
    capsys.readouterr()
    assert predict.main(["--workdir", str(workdir), *images]) == 0
    before = _last_json(capsys.readouterr().out, "predictions: ")
    assert evaluate.main(["--workdir", str(workdir)]) == 0
    eval_before = _last_json(capsys.readouterr().out, "result: ")

    moved = data.parent / "moved_away"
    data.rename(moved)  # the training images are gone
    try:
        assert predict.main(["--workdir", str(workdir), *images]) == 0
        assert _last_json(capsys.readouterr().out, "predictions: ") == before
        assert {t["class"] for p in before for t in p["top"]} <= set(CLASSES)
        # Any folder with the same classes evaluates, with the run's statistics.
        assert evaluate.main(["--workdir", str(workdir), "--data_dir", str(moved)]) == 0
        assert _last_json(capsys.readouterr().out, "result: ")["top1"] == eval_before["top1"]
    finally:
        moved.rename(data)


def test_evaluate_refuses_other_classes_and_mixed_ensembles(pretrained, finetuned, tmp_path,
                                                            capsys):
    from resnet_jax.training import evaluate

    workdir, data = pretrained
    other = _folder(tmp_path / "other", ["dog", "frog", "horse", "ship"], per_class=2)
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(workdir), "--data_dir", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "classes" in err[0], err
    three = finetuned[0]  # dog, frog, horse
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(workdir), "--workdir", str(three)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class lists" in err[0], err


def test_ensemble_reports_each_model_and_the_average(pretrained, tmp_path, capsys):
    from resnet_jax.training import evaluate

    workdir, data = pretrained
    second = tmp_path / "second"
    assert _train(second, data, "seed=1", "dataset_options.normalization=mean_std") == 0
    capsys.readouterr()
    singles = []
    for w in (workdir, second):
        assert evaluate.main(["--workdir", str(w), "--view", "ten_crop"]) == 0
        singles.append(_last_json(capsys.readouterr().out, "result: "))
    assert evaluate.main(["--workdir", str(workdir), "--workdir", str(second),
                          "--view", "ten_crop"]) == 0
    result = _last_json(capsys.readouterr().out, "result: ")
    # Each model normalises [0, 1] pixels on the device with its own recorded statistics: the
    # same numbers as its own evaluation with the pipeline's normalisation.
    for single, member in zip(singles, result["models"], strict=True):
        assert member["top1"] == single["top1"] and member["top5"] == single["top5"]
        assert member["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert result["ensemble"]["num_examples"] == singles[0]["num_examples"] == 32
    assert 0.0 <= result["ensemble"]["top1"] <= 1.0


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    """The pretrained run fine-tuned on 3 other classes: new head, frozen backbone and BN."""
    workdir, _ = pretrained
    tmp = tmp_path_factory.mktemp("ft")
    data = _folder(tmp / "d3", ["dog", "frog", "horse"], per_class=8)
    out = tmp / "ft"
    with contextlib.redirect_stdout(io.StringIO()) as log:
        assert _train(out, data, f"init_from={workdir}", "frozen=^(?!fc/)",
                      "frozen_bn_stats=true") == 0
    return out, data, log.getvalue()


def test_init_from_our_run_new_head_frozen_backbone(pretrained, finetuned, capsys):
    workdir, _ = pretrained
    source, _ = load_numpy(str(workdir / "checkpoints"))
    out, data, log = finetuned
    line = [x for x in log.splitlines() if x.startswith("init_from:")]
    assert len(line) == 1 and "re-initialised fc/bias, fc/kernel (4 -> 3 outputs" in line[0], log
    assert "the pretrained run's (per_pixel_mean)" in line[0]
    state, meta = load_numpy(str(out / "checkpoints"))
    assert int(state["step"]) == 4  # the run's own schedule, from step 0
    tuned = load_run(str(out))
    assert tuned.spec.class_names == ("dog", "frog", "horse")
    chex.assert_trees_all_equal(  # the pretrained run's normalisation, not re-estimated
        tuned.spec.normalization["mean_image"],
        load_run(str(workdir)).spec.normalization["mean_image"])
    chex.assert_shape(state["params"]["fc"]["kernel"], (8, 3))
    backbone = [name for name in source["params"] if name != "fc"]
    chex.assert_trees_all_equal(  # frozen: bit-identical
        {name: source["params"][name] for name in backbone},
        {name: state["params"][name] for name in backbone})
    chex.assert_trees_all_equal(source["batch_stats"], state["batch_stats"])  # frozen BN stats
    # Resuming the same workdir ignores init_from and says so.
    assert _train(out, data, f"init_from={workdir}", "frozen=^(?!fc/)", "frozen_bn_stats=true",
                  "num_train_steps=4") == 0
    assert "init_from ignored: resuming" in capsys.readouterr().out


def test_init_from_our_run_with_other_classes_of_the_same_count(pretrained, tmp_path, capsys):
    """Our runs record class names: 4 other classes mean a new head, though the shapes fit."""
    workdir, _ = pretrained
    data = _folder(tmp_path / "d4", ["dog", "frog", "horse", "ship"], per_class=8)
    capsys.readouterr()
    assert _train(tmp_path / "ft", data, f"init_from={workdir}", "num_train_steps=2") == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("init_from:")]
    assert "re-initialised fc/bias, fc/kernel (4 -> 4 outputs, other classes)" in line[0], line


def _torch_file(tmp_path, variables, name, wrap):
    import torch

    import resnet_jax

    options = dict(stage_sizes=(1, 1, 1), stage_widths=(4, 8, 8), stem_width=4)
    sd = resnet_jax.to_torchvision(name, variables, **options)
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    sd = wrap(sd)
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    return path


def test_init_from_pytorch_files_as_people_have_them(pretrained, tmp_path, capsys):
    pytest.importorskip("torch")
    workdir, data = pretrained
    run = load_run(str(workdir))

    def ddp_cifar_checkpoint(sd):  # {"model_state_dict": {"module.linear.weight": ...}}
        renamed = {("module." + k).replace("module.fc.", "module.linear."): v
                   for k, v in sd.items()}
        return {"epoch": 3, "model_state_dict": renamed}

    path = _torch_file(tmp_path, run.variables, "resnet20", ddp_cifar_checkpoint)
    out = tmp_path / "ft"
    capsys.readouterr()
    assert _train(out, data, f"init_from={path}", "frozen=^(?!fc/)",
                  "frozen_bn_stats=true") == 0
    log = capsys.readouterr().out
    assert "init_from: loaded" in log and f"PyTorch file {path}" in log
    assert "nothing re-initialised" in log  # same 4 classes: the head is loaded too
    state, _ = load_numpy(str(out / "checkpoints"))
    chex.assert_trees_all_close(run.variables["params"]["layer2"], state["params"]["layer2"],
                                rtol=0, atol=0)


def test_init_from_named_weights(pretrained, tmp_path, capsys, monkeypatch):
    """``init_from=torchvision:NAME``: fetched (a local server stands in for
    download.pytorch.org), verified, loaded; their ImageNet normalisation comes along."""
    from tests.test_weights import Server, register, safetensors_bytes

    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    workdir, data = pretrained
    run = load_run(str(workdir))
    options = dict(stage_sizes=(1, 1, 1), stage_widths=(4, 8, 8), stem_width=4)
    body = safetensors_bytes(resnet_jax.to_torchvision("resnet20", run.variables, **options))
    server = Server()
    try:
        entry = register(monkeypatch, server, "timm", "tiny", body, sha256="")
        other = register(monkeypatch, server, "timm", "deep", body, sha256="", model="resnet32")
        capsys.readouterr()
        assert _train(tmp_path / "ft", data, f"init_from={entry.name}", "frozen=^(?!fc/)",
                      "frozen_bn_stats=true") == 0
        log = capsys.readouterr().out
        assert len(server.requests) == 1
        line = [x for x in log.splitlines() if x.startswith("init_from:")]
        assert len(line) == 1 and f"from {entry.name} (" in line[0], log
        assert "nothing re-initialised" in line[0]  # 4 outputs for 4 classes: the head is kept
        assert "normalisation: timm's ImageNet mean/std (mean_std)" in line[0], line
        tuned = load_run(str(tmp_path / "ft"))
        assert tuned.spec.normalization == entry.normalization
        state, _ = load_numpy(str(tmp_path / "ft" / "checkpoints"))
        chex.assert_trees_all_equal(run.variables["params"]["layer2"], state["params"]["layer2"])
        assert _train(tmp_path / "ft2", data, f"init_from={other.name}") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "set --config.model=resnet32" in err[0], err
    finally:
        server.close()


@pytest.mark.parametrize("case", ["missing", "corrupt", "other_arch", "not_tensors",
                                  "frozen_nothing"])
def test_bad_init_from_is_one_error_line(pretrained, tmp_path, capsys, case):
    workdir, data = pretrained
    extra = []
    if case == "missing":
        init, expect = tmp_path / "nope", "does not exist"
    elif case == "corrupt":
        init, expect = tmp_path / "w.pth", "corrupt"
        init.write_bytes(b"PK\x03\x04 this is not a zip")
    elif case == "other_arch":
        pytest.importorskip("torch")
        run = load_run(str(workdir))
        init = _torch_file(tmp_path, run.variables, "resnet20", lambda sd: sd)
        extra = ["model_kwargs.stage_sizes=(2, 1, 1)"]  # a deeper network than the file's
        expect = "missing params/layer1/block1/bn1/bias"
    elif case == "not_tensors":
        torch = pytest.importorskip("torch")
        init, expect = tmp_path / "w.pth", "holds no state_dict"
        torch.save({"epoch": 3, "notes": "no weights"}, init)
    else:
        init, expect = workdir, "matches no parameter"
        extra = ["frozen=^backbone/"]
    out = tmp_path / "out"
    capsys.readouterr()
    assert _train(out, data, f"init_from={init}", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def _mount_tmpfs(path, size):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


def test_disk_full_while_saving_is_one_error_line_and_resumes(pretrained, tmp_path, capsys,
                                                                monkeypatch):
    """A real full filesystem (a small tmpfs, needs root as in CI): the run stops with one
    error line, the earlier checkpoint stays intact, and the same command resumes."""
    from resnet_jax.training import loop

    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        _, data = pretrained
        workdir = mount / "run"
        filler = mount / "filler"

        def fill_disk(step, state):
            if step == 2 and not filler.exists():
                with open(filler, "wb") as f:  # take every free byte
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                    except OSError:
                        pass

        original = loop.train_and_evaluate
        monkeypatch.setattr(loop, "train_and_evaluate",
                            lambda *a, **k: original(*a, hooks=[fill_disk], **k))
        capsys.readouterr()
        assert _train(workdir, data, "async_checkpointing=false") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: disk full"), err
        state, _ = load_numpy(str(workdir / "checkpoints"))
        assert int(state["step"]) == 2  # intact
        filler.unlink()
        monkeypatch.setattr(loop, "train_and_evaluate", original)
        assert _train(workdir, data, "async_checkpointing=false") == 0
        assert "resumed from step 2" in capsys.readouterr().out
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: open handles


def test_imagenet_normalization_is_one_option(tmp_path):
    from resnet_jax import data

    opts = data.Options(normalization="imagenet")
    stats = data.normalization_stats("folder", None, 8, "train", opts)
    assert stats == {"kind": "mean_std", "mean": [0.485, 0.456, 0.406],
                     "std": [0.229, 0.224, 0.225]}


def test_predict_errors(pretrained, tmp_path, capsys):
    from resnet_jax.training import predict

    workdir, _ = pretrained
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    for args, expect in (([str(bad)], "cannot be decoded"),
                         ([str(tmp_path / "none.jpg")], "does not exist")):
        capsys.readouterr()
        assert predict.main(["--workdir", str(workdir), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err
    assert predict.main(["--workdir", str(tmp_path), str(bad)]) == 2
    assert "no latest checkpoint" in capsys.readouterr().err
