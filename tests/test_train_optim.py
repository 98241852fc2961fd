"""Learning-rate schedules, weight-decay mask, label smoothing, optimizer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.training import optim
from resnet_jax.training.config import default_config
from resnet_jax.training.recipes import cifar10, imagenet


def test_cifar_paper_schedule_with_resnet110_warmup():
    c = cifar10("resnet110", warmup_400=True)
    lr = optim.create_learning_rate_fn(c, steps_per_epoch=390)
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001}
    for step, value in expected.items():
        assert float(lr(step)) == pytest.approx(value, rel=1e-6), step
    assert optim.total_steps(c, 390) == 64000


def test_imagenet_cosine_with_linear_warmup_and_batch_scaling():
    c = imagenet("resnet50")
    c.global_batch_size = 1024
    spe = 1251
    lr = optim.create_learning_rate_fn(c, steps_per_epoch=spe)
    peak = 0.1 * 1024 / 256
    total = 90 * spe
    warm = 5 * spe
    assert float(lr(0)) == 0.0
    assert float(lr(warm // 2)) == pytest.approx(peak * (warm // 2) / warm, rel=1e-5)
    assert float(lr(warm)) == pytest.approx(peak, rel=1e-5)
    mid = warm + (total - warm) // 2
    assert float(lr(mid)) == pytest.approx(peak / 2, rel=1e-3)
    assert float(lr(total)) == pytest.approx(0.0, abs=1e-6)


def test_paper2015_imagenet_step_schedule_in_epochs():
    c = imagenet("resnet50", "paper2015")
    lr = optim.create_learning_rate_fn(c, steps_per_epoch=100)
    assert [float(lr(s)) for s in (0, 2999, 3000, 6000)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_constant_schedule():
    c = default_config()
    c.schedule, c.warmup, c.lr_scale_with_batch = "constant", "none", False
    assert float(optim.create_learning_rate_fn(c, 10)(12345)) == pytest.approx(0.1)


def _abstract_params():
    import resnet_jax

    model = resnet_jax.create_model("resnet20", num_classes=10)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    return jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes["params"])


def test_weight_decay_mask_excludes_bn_and_biases():
    params = _abstract_params()
    mask = optim.weight_decay_mask(params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = [k for k, v in flat.items() if v]
    excluded = [k for k, v in flat.items() if not v]
    assert decayed and all("kernel" in k for k in decayed)
    assert all(("scale" in k or "bias" in k) for k in excluded)
    assert any("bias" in k and "fc" in k for k in excluded)
    # The optimizer applies it: with zero gradients only kernels move (by lr * wd * w).
    c = default_config()
    c.wd_exclude_bn_and_bias, c.momentum, c.schedule, c.warmup = True, 0.0, "constant", "none"
    c.lr_scale_with_batch = False
    tx = optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    expected = jax.tree.map(lambda m: -0.1 * 1e-4 if m else 0.0, mask)
    chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=0)


def test_label_smoothing():
    logits = jnp.asarray([[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    labels = jnp.asarray([0, 2])
    plain = optim.cross_entropy(logits, labels)
    chex.assert_trees_all_close(
        plain, optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6, atol=0
    )
    eps = 0.1
    logp = jax.nn.log_softmax(logits)
    target = np.full((2, 4), eps / 4)
    target[[0, 1], [0, 2]] += 1 - eps
    chex.assert_trees_all_close(
        optim.cross_entropy(logits, labels, eps), -(target * logp).sum(-1), rtol=1e-6, atol=0
    )
