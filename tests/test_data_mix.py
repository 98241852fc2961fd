"""Mixup/CutMix on the device against a numpy transcription of timm's ``Mixup`` (batch mode)
with the same random draws; soft targets, label smoothing, the BCE loss, determinism, config
errors, and training with mixing on 8 simulated devices, resumed bit-identically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data import mix
from resnet_jax.training import optim


def _timm_mix_batch(x, target, num_classes, smoothing, d):
    """timm ``Mixup._mix_batch`` + ``mixup_target`` (NCHW there, NHWC here) given the draws."""
    x = x.copy()
    lam = float(d["lam_mix"]) if bool(d["apply"]) else 1.0
    if lam != 1.0:
        if bool(d["use_cutmix"]):
            h, w = x.shape[1:3]
            ratio = np.sqrt(1 - lam)
            cut_h, cut_w = int(h * ratio), int(w * ratio)
            cy, cx = int(d["cy"]), int(d["cx"])
            yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
            xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
            x[:, yl:yh, xl:xh] = x[::-1][:, yl:yh, xl:xh]
            lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
        else:
            x = x * lam + x[::-1] * (1.0 - lam)
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = np.full((len(target), num_classes), off)
    y1[np.arange(len(target)), target] = on
    return x, y1 * lam + y1[::-1] * (1.0 - lam)


def _batch(b=6, h=9, w=11, c=5, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(b, h, w, 3).astype(np.float32), rng.randint(0, c, b)


@pytest.mark.parametrize(
    "cfg",
    [
        mix.MixConfig(cutmix_alpha=1.0),
        mix.MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.7, switch_prob=0.5),
    ],
)
def test_mix_matches_timm_given_the_same_draws(cfg):
    x, labels = _batch()
    kinds = set()
    for i in range(10):
        smoothing = 0.1 * (i % 2)  # with and without label smoothing
        d = jax.device_get(mix.draw(jax.random.PRNGKey(i), cfg, x.shape[1:3]))
        out, lam = mix.mix_images(jnp.asarray(x), d)
        targets = mix.mix_targets(optim.one_hot_targets(jnp.asarray(labels), 5, smoothing), lam)
        ref_x, ref_t = _timm_mix_batch(x, labels, 5, smoothing, d)
        np.testing.assert_allclose(out, ref_x, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(targets, ref_t, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.sum(targets, -1), 1.0, rtol=1e-6)
        kinds.add((bool(d["apply"]), bool(d["use_cutmix"])))
    if cfg.prob < 1:  # some batches left unmixed, and both kinds drawn
        assert {(True, True), (True, False)} <= kinds and any(not a for a, _ in kinds)
    else:
        assert kinds == {(True, True)}


def test_draw_distribution():
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    cfg = mix.MixConfig(mixup_alpha=0.5, cutmix_alpha=1.0, prob=0.6, switch_prob=0.3)
    d = jax.device_get(jax.vmap(lambda k: mix.draw(k, cfg, (10, 20)))(keys))
    assert abs(d["apply"].mean() - 0.6) < 0.03
    assert abs(d["use_cutmix"].mean() - 0.3) < 0.03
    # Beta(a, a) is symmetric about 1/2; Var = 1 / (4 (2a + 1)): 1/8 for a=0.5, 1/12 for a=1.
    for flag, var in ((True, 1 / 12), (False, 1 / 8)):
        lam = d["lam_mix"][d["use_cutmix"] == flag]
        assert abs(lam.mean() - 0.5) < 0.03 and abs(lam.var() - var) < 0.015
    assert d["cy"].min() == 0 and d["cy"].max() == 9 and d["cx"].max() == 19


def test_cutmix_lam_is_the_kept_area():
    x = np.zeros((2, 10, 10, 1), np.float32)
    x[1] = 1.0  # example 0's partner (the reversed batch) is all ones
    d = {"apply": True, "use_cutmix": True, "lam_mix": jnp.float32(0.64), "cy": 5, "cx": 5}
    out, lam = mix.mix_images(jnp.asarray(x), d)
    # side 10 * sqrt(0.36) = 6: rows/cols 2..7 pasted, lam corrected to 1 - 36/100.
    assert float(lam) == pytest.approx(0.64)
    assert float(out[0].sum()) == 36 and float(out[0, 2:8, 2:8].min()) == 1.0
    d["cy"], d["cx"] = 0, 9  # clipped at the corner: rows [0, 3), columns [6, 10)
    out, lam = mix.mix_images(jnp.asarray(x), d)
    assert float(out[0].sum()) == 12 and float(out[0, 0:3, 6:10].min()) == 1.0
    assert float(lam) == pytest.approx(1 - 12 / 100)


def test_mixing_is_deterministic_and_off_is_identity():
    x, _ = _batch()
    cfg = mix.MixConfig(mixup_alpha=0.2, cutmix_alpha=1.0)
    fn = jax.jit(mix.mixer(cfg))
    a, lam_a = fn(jnp.asarray(x), jax.random.PRNGKey(3))
    b, lam_b = fn(jnp.asarray(x), jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a, b)
    assert float(lam_a) == float(lam_b)
    c, _ = fn(jnp.asarray(x), jax.random.PRNGKey(4))
    assert not np.array_equal(a, c)
    assert mix.mixer(mix.MixConfig()) is None  # both alphas 0: no mixing code in the step
    assert mix.mixer(mix.MixConfig(mixup_alpha=1.0, prob=0.0)) is None
    d = {"apply": False, "use_cutmix": False, "lam_mix": jnp.float32(0.3), "cy": 1, "cx": 1}
    out, lam = mix.mix_images(jnp.asarray(x), d)
    np.testing.assert_array_equal(out, x)
    assert float(lam) == 1.0


def test_label_smoothing_targets_exact():
    t = optim.one_hot_targets(jnp.asarray([2, 0]), 4, 0.2)
    np.testing.assert_allclose(t[0], [0.05, 0.05, 0.85, 0.05], rtol=1e-6)  # 1 - e + e/C, e/C
    lam = jnp.float32(0.7)
    mixed = mix.mix_targets(t, lam)
    np.testing.assert_allclose(mixed[0], 0.7 * t[0] + 0.3 * t[1], rtol=1e-6)


def test_bce_loss_matches_hand_formula():
    rng = np.random.RandomState(0)
    logits = rng.randn(3, 4).astype(np.float32)
    targets = rng.dirichlet(np.ones(4), 3).astype(np.float32)
    sig = 1 / (1 + np.exp(-logits.astype(np.float64)))
    ref = -(targets * np.log(sig) + (1 - targets) * np.log(1 - sig))
    got = optim.loss_per_example(jnp.asarray(logits), jnp.asarray(targets), "bce")
    np.testing.assert_allclose(got, ref.mean(-1), rtol=1e-5)
    # The batch mean is timm's BinaryCrossEntropy(reduction="mean"): over all b*C elements.
    assert float(got.mean()) == pytest.approx(ref.mean(), rel=1e-5)
    binary = (targets > 0.3).astype(np.float64)
    ref_t = -(binary * np.log(sig) + (1 - binary) * np.log(1 - sig)).mean(-1)
    got_t = optim.loss_per_example(jnp.asarray(logits), jnp.asarray(targets), "bce", 0.3)
    np.testing.assert_allclose(got_t, ref_t, rtol=1e-5)
    soft = optim.loss_per_example(jnp.asarray(logits), jnp.asarray(targets))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(soft, -(targets * logp).sum(-1), rtol=1e-5)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mixup_alpha": -0.2}, "config.mixup_alpha must be >= 0"),
        ({"cutmix_alpha": -1.0}, "config.cutmix_alpha must be >= 0"),
        ({"mixup_alpha": 0.2, "mix_prob": 1.5}, r"config.mix_prob must be in \[0, 1\]"),
        ({"cutmix_alpha": 1.0, "mix_switch_prob": -0.1}, "config.mix_switch_prob must be in"),
        ({"mix_prob": 0.5}, "mix_prob = 0.5 has no effect: mixing is off; set config.mixup_alpha"),
        ({"loss": "focal"}, r"config.loss = 'focal'; choose one of \('softmax', 'bce'\)"),
        ({"loss": "bce", "bce_target_threshold": 1.0}, "bce_target_threshold must be in"),
        ({"bce_target_threshold": 0.2}, "bce_target_threshold needs config.loss='bce'"),
        ({"dataset_options": {"resize_method": "bilinaer"}},
         "config.dataset_options.resize_method = 'bilinaer'; choose one of"),
    ],
)
def test_bad_mixing_and_loss_options_are_config_errors(changes, message):
    from resnet_jax.training.config import ConfigError, default_config, validate

    c = default_config()
    validate(c)  # the defaults: mixing off, softmax loss
    c.update(changes)
    with pytest.raises(ConfigError, match=message):
        validate(c)


def test_resize_methods_are_tensorflows():
    from resnet_jax.data.host_tf import tf
    from resnet_jax.training.config import RESIZE_METHODS

    methods = {v for k, v in vars(tf.image.ResizeMethod).items() if k.isupper()}
    assert set(RESIZE_METHODS) == methods


def test_resume_with_mixing_and_host_augment_is_bit_identical(tmp_path):
    """The step with mixing, BCE and host augmentation on 8 devices (shard_map): Mixup/CutMix
    draws come from the step's RNG and RandAugment/erasing from the example's seed, so a run
    resumed at step 2 ends with the uninterrupted run's parameters, bit for bit."""
    import os
    import shutil

    from resnet_jax.checkpoint import load_numpy
    from resnet_jax.training.config import load_config
    from resnet_jax.training.loop import train_and_evaluate

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    overrides = [
        "model_kwargs.stage_sizes=(1, 1, 1)", "model_kwargs.stage_widths=(4, 8, 8)",
        "model_kwargs.stem_width=4", "image_size=8", "global_batch_size=16",
        "num_train_steps=4", "warmup=none", "checkpoint_every_steps=2", "keep_checkpoints=10",
        "keep_best=false", "eval_every_epochs=0", "progress_bar=off", "async_checkpointing=false",
        "mixup_alpha=0.8", "cutmix_alpha=1.0", "loss=bce", "label_smoothing=0.1",
        "dataset_options.auto_augment=rand-m9-mstd0.5-inc1", "dataset_options.random_erasing=0.5",
    ]  # fmt: skip
    config = load_config(os.path.join(root, "configs", "quickstart.py"), overrides)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_and_evaluate(config, straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    seen = []
    summary = train_and_evaluate(config, resumed, hooks=[lambda step, state: seen.append(step)])
    assert summary["step"] == 4 and seen == [3, 4]  # it really ran steps 3 and 4 again
    a = load_numpy(os.path.join(straight, "checkpoints"), 4)[0]
    b = load_numpy(os.path.join(resumed, "checkpoints"), 4)[0]
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
