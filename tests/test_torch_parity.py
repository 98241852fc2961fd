"""Numerical equality with PyTorch through the torchvision-format converter."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax

torch = pytest.importorskip("torch", reason="PyTorch is in requirements-dev.txt")
from tests import torch_reference  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-4


def _nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def _pair(name: str, seed: int = 0):
    net = torch_reference.build(name, num_classes=10)
    torch_reference.randomize(net, seed)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    variables = resnet_jax.from_torchvision(name, state)
    return net, variables, resnet_jax.create_model(name, num_classes=10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_eval_and_train_mode_match_pytorch(name):
    net, variables, model = _pair(name)
    # 128 px: at 64 px the last stage's train-mode BN sees 16 values per channel, and float32
    # summation-order noise (oneDNN vs XLA) is amplified to ~1e-4; here it stays below 6e-5.
    x = np.random.default_rng(1).normal(size=(4, 3, 128, 128)).astype(np.float32)

    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    logits = model.apply(variables, _nhwc(x), train=False)
    assert np.abs(expected).max() > 0.1  # a real signal, not all zeros
    chex.assert_trees_all_close(logits, expected, rtol=0, atol=TOL)

    net.train()  # batch statistics, and PyTorch's running-statistics update (momentum 0.1)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    logits, updated = model.apply(variables, _nhwc(x), train=True, mutable=["batch_stats"])
    chex.assert_trees_all_close(logits, expected, rtol=0, atol=TOL)
    after = resnet_jax.to_torchvision(name, {**variables, **updated})
    running = {k: v.numpy() for k, v in net.state_dict().items() if "running_" in k}
    chex.assert_trees_all_close({k: after[k] for k in running}, running, rtol=1e-5, atol=TOL)


def test_round_trip_and_loading_into_pytorch():
    net, variables, _ = _pair("resnet18", seed=3)
    state = resnet_jax.to_torchvision("resnet18", variables)
    fresh = torch_reference.build("resnet18", num_classes=10)
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    want, loaded = net.state_dict(), fresh.state_dict()
    chex.assert_trees_all_equal({k: loaded[k].numpy() for k in want},
                                {k: v.numpy() for k, v in want.items()})
    back = resnet_jax.from_torchvision("resnet18", state)
    chex.assert_trees_all_equal(back, variables)


def test_bad_state_dicts_are_named_and_nothing_is_returned():
    net = torch_reference.build("resnet18", num_classes=10)
    state = dict(net.state_dict())
    with pytest.raises(ValueError, match="missing keys: layer4.1.bn2.weight"):
        resnet_jax.from_torchvision("resnet18", {k: v for k, v in state.items()
                                                 if k != "layer4.1.bn2.weight"})
    with pytest.raises(ValueError, match="unexpected keys: extra.weight"):
        resnet_jax.from_torchvision("resnet18", {**state, "extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"mis-shaped keys: layer1.0.conv1.weight \(64, 64, 1, 1"):
        resnet_jax.from_torchvision(
            "resnet18", {**state, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    # Weights of another architecture: both the missing and the mis-shaped keys are named.
    with pytest.raises(ValueError, match=r"missing keys: layer1.0.bn3.bias.*mis-shaped keys: "
                                         r"fc.weight \(10, 512\) \(expected \(10, 2048\)\)"):
        resnet_jax.from_torchvision("resnet50", state)


def test_scanned_layout_converts_both_ways():
    net, variables, model = _pair("resnet18", seed=5)
    scanned = resnet_jax.from_torchvision("resnet18", net.state_dict(), scan_units=True)
    assert "blocks" in scanned["params"]["layer1"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
    scan_model = resnet_jax.create_model("resnet18", num_classes=10, scan_units=True)
    chex.assert_trees_all_close(scan_model.apply(scanned, x, train=False),
                                model.apply(variables, x, train=False), rtol=1e-7, atol=1e-5)
    back = resnet_jax.to_torchvision("resnet18", scanned)
    want = {k: v.numpy() for k, v in net.state_dict().items()}
    chex.assert_trees_all_equal({k: back[k] for k in want}, want)


def test_evaluate_command_on_torchvision_weights_matches_pytorch(tmp_path, capsys):
    import json

    from resnet_jax import data
    from resnet_jax.training import evaluate

    net = torch_reference.build("resnet18", num_classes=10)
    torch_reference.randomize(net, 7)
    net.eval()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    assert evaluate.main(["--torchvision", str(path), "--model", "resnet18", "--dataset", "digits",
                          "--split", "test", "--image_size", "32", "--batch_size", "64"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1][len("result: "):])
    # PyTorch's own accuracy on the very same batches.
    ds = data.create_dataset("digits", "test", global_batch_size=64, train=False, image_size=32)
    correct = total = top5 = 0
    with torch.no_grad():
        for batch in ds:
            logits = net(torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())).numpy()
            mask, labels = batch["mask"], batch["label"]
            correct += int((logits.argmax(1) == labels)[mask].sum())
            ranks = np.argsort(-logits, axis=1)[:, :5]
            top5 += int((ranks == labels[:, None]).any(1)[mask].sum())
            total += int(mask.sum())
    assert total == 359
    assert result["top1"] == pytest.approx(correct / total, abs=1e-9)
    assert result["top5"] == pytest.approx(top5 / total, abs=1e-9)


def test_evaluate_torchvision_normalization_flag(tmp_path, capsys):
    """--normalization imagenet is what torchvision's weights expect; it changes the input."""
    import json

    from resnet_jax.training import evaluate

    net = torch_reference.build("resnet18", num_classes=10)
    torch_reference.randomize(net, 7)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    args = ["--torchvision", str(path), "--model", "resnet18", "--dataset", "digits",
            "--split", "test", "--image_size", "16", "--batch_size", "64"]
    losses = []
    for extra in ([], ["--normalization", "imagenet"]):
        assert evaluate.main(args + extra) == 0
        losses.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1][8:])["loss"])
    assert losses[0] != losses[1]
    with pytest.raises(SystemExit):
        evaluate.main(["--workdir", str(tmp_path), "--normalization", "imagenet"])
