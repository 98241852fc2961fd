"""The experiments end to end on a tiny budget: outputs exist and are well-formed.

The papers' claims are checked by the --quick runs reported in docs/experiments.md, not here.
"""

import json

import pytest

from resnet_jax.data import testing
from resnet_jax.experiments import degradation, gradient_flow, layer_responses, shortcuts

TINY = ["--steps", "2", "--batch", "16", "--test_images", "0"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    if not testing.CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"real-data archive {testing.CIFAR10_ARCHIVE} does not exist")
    root = tmp_path_factory.mktemp("cifar")
    return str(testing.extract_subset(testing.CIFAR10_ARCHIVE, root, per_class=3))


@pytest.fixture(scope="module")
def degradation_out(cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "degradation"
    argv = [*TINY, "--depths", "8,14", "--data_dir", cifar_dir, "--out", str(out)]
    assert degradation.main(argv) == 0
    return out


def _read(out, image):
    assert (out / image).read_bytes()[:8] == PNG_MAGIC
    md = (out / "results.md").read_text()
    assert f"]({image})" in md and "| net " in md or "| key " in md
    return json.loads((out / "results.json").read_text()), md


def test_degradation_outputs(degradation_out):
    data, md = _read(degradation_out, "degradation.png")
    assert set(data["runs"]) == {"plain8", "plain14", "resnet8", "resnet14"}
    for run in data["runs"].values():
        assert [s for s, _ in run["train"]] == [1, 2]  # logged every step of the tiny run
        assert run["eval"] and 0.0 <= run["test_error"] <= 1.0
        assert 0.0 <= run["final_train_error"] <= 1.0
    assert [c["claim"] for c in data["claims"]] == [
        "plain-14 has higher training error than plain-8",
        "ResNet-14 has not higher training error than ResNet-8",
    ]
    assert "python -m resnet_jax.experiments.degradation --steps 2" in md
    assert data["test_images"] == 30 and data["steps"] == 2  # the folder's 3 a class


def test_layer_responses_from_trained_runs(degradation_out, tmp_path):
    out = tmp_path / "layer_responses"
    argv = [*TINY, "--depths", "8,14", "--runs", str(degradation_out / "runs"),
            "--out", str(out)]  # fmt: skip
    assert layer_responses.main(argv) == 0
    data, _ = _read(out, "layer_responses.png")
    # One response per 3x3 layer: the stem plus two per basic unit (6n + 1 for depth 6n + 2).
    assert {k: len(v["std"]) for k, v in data["nets"].items()} == {
        "plain8": 7, "plain14": 13, "resnet8": 7, "resnet14": 13}  # fmt: skip
    assert all(s > 0 for v in data["nets"].values() for s in v["std"])


def test_gradient_flow_trains_its_nets(cifar_dir, tmp_path):
    out = tmp_path / "gradient_flow"
    argv = [*TINY, "--depths", "8", "--data_dir", cifar_dir, "--out", str(out)]
    assert gradient_flow.main(argv) == 0
    data, _ = _read(out, "gradient_flow.png")
    assert set(data["nets"]) == {"plain8", "resnet8", "resnet_zero_init8"}
    for net in data["nets"].values():
        assert len(net["init"]) == len(net["trained"]) == 3  # one per residual unit
        assert all(g > 0 for g in net["init"] + net["trained"])
    zero = data["nets"]["resnet_zero_init8"]["init"]
    # Zero-initialised branches make every unit the identity at init (ReLU of a non-negative
    # input), so the same gradient reaches every unit's input.
    assert max(zero) == pytest.approx(min(zero), rel=1e-5)
    assert (tmp_path / "models" / "resnet_zi8-2x16" / "checkpoints").is_dir()


def test_shortcuts_subset(cifar_dir, tmp_path):
    out = tmp_path / "shortcuts"
    argv = [*TINY, "--depths", "8", "--variants", "C,e", "--data_dir", cifar_dir,
            "--out", str(out)]  # fmt: skip
    assert shortcuts.main(argv) == 0
    data, md = _read(out, "shortcuts.png")
    assert list(data["results"]) == ["C", "e"]
    assert data["results"]["e"]["paper"] == 6.37 and "(e) full pre-activation" in md


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--depths", "8,15"], "6n+2"),
        (["--depths", "20"], "at least two depths"),
        (["--data_dir", "/nonexistent"], "has no train/ folder"),
    ],
)
def test_bad_arguments_are_one_error_line(argv, message, tmp_path, capsys):
    assert degradation.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_unknown_variant(capsys, tmp_path):
    assert shortcuts.main(["--variants", "A,z", "--out", str(tmp_path / "o")]) == 2
    assert "unknown variant(s) ['z']" in capsys.readouterr().err
