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


def _config(**overrides):
    c = default_config()
    c.lr_scale_with_batch, c.num_train_steps, c.schedule_unit = False, 100, "steps"
    for k, v in overrides.items():
        c[k] = v
    return c


def _schedule(**overrides):
    return optim.create_learning_rate_fn(_config(**overrides), steps_per_epoch=10)


def test_flat_cosine_schedule():
    # fastai's fit_flat_cos: peak until flat_fraction of all steps, then cosine to zero.
    lr = _schedule(schedule="flat_cosine", warmup="linear", warmup_length=10.0, flat_fraction=0.6)
    # Cosine over the last 40 steps: 0.1 * (1 + cos(pi * t)) / 2 at t = 1/4, 1/2, 3/4, 1.
    c = [0.1 * (1 + np.cos(np.pi * t)) / 2 for t in (0.25, 0.5, 0.75)]
    expected = {0: 0.0, 5: 0.05, 10: 0.1, 59: 0.1, 60: 0.1, 70: c[0], 80: c[1], 90: c[2], 100: 0}
    for step, value in expected.items():
        assert float(lr(step)) == pytest.approx(value, abs=1e-7), step
    # A flat phase shorter than the warm-up: the cosine starts after the warm-up.
    short = _schedule(schedule="flat_cosine", warmup="linear", warmup_length=20.0,
                      flat_fraction=0.0)
    assert float(short(20)) == pytest.approx(0.1) and float(short(60)) == pytest.approx(0.05)


def _fastai_combined_cos(pos, pct, start, middle, end):
    # fastai's combined_cos: SchedCos(start, middle) over [0, pct), SchedCos(middle, end) after.
    def sched_cos(a, b, p):
        return a + (1 + np.cos(np.pi * (1 - p))) * (b - a) / 2

    if pos < pct:
        return sched_cos(start, middle, pos / pct)
    return sched_cos(middle, end, (pos - pct) / (1 - pct))


@pytest.mark.parametrize("warmup_length", [0.0, 20.0])
def test_one_cycle_schedule_is_fastais_fit_one_cycle(warmup_length):
    # fit_one_cycle(lr, div=25, div_final=1e5, pct_start=0.25), over the steps after any warm-up.
    lr = _schedule(schedule="one_cycle", warmup="linear" if warmup_length else "none",
                   warmup_length=warmup_length)
    warm = int(warmup_length)
    for step in range(warm, 101, 3):
        pos = (step - warm) / (100 - warm)
        expected = _fastai_combined_cos(pos, 0.25, 0.1 / 25, 0.1, 0.1 / 1e5)
        # abs: float32's 1 + cos near pi is good to lr * 2^-24 (~6e-9 at lr 0.1), not relatively.
        assert float(lr(step)) == pytest.approx(expected, rel=1e-5, abs=1e-8), step
    assert float(lr(warm + (100 - warm) // 4)) == pytest.approx(0.1)
    other = _schedule(schedule="one_cycle", warmup="none", one_cycle_pct_start=0.5,
                      one_cycle_div=10.0, one_cycle_div_final=100.0)
    assert [float(other(s)) for s in (0, 50, 100)] == pytest.approx([0.01, 0.1, 0.001])
    assert float(other(75)) == pytest.approx(_fastai_combined_cos(0.75, 0.5, 0.01, 0.1, 0.001))


@pytest.mark.parametrize("warmup_length", [0.0, 20.0])
def test_one_cycle_momentum_moves_against_the_learning_rate_as_fastais(warmup_length):
    # fit_one_cycle's moms=(0.95, 0.85, 0.95): combined_cos over the lr's phases; m0 in warm-up.
    overrides = dict(schedule="one_cycle", warmup="linear" if warmup_length else "none",
                     warmup_length=warmup_length)
    mom = optim.create_momentum_fn(_config(**overrides), 10)
    warm = int(warmup_length)
    for step in range(0, 101, 3):
        pos = max(0, step - warm) / (100 - warm)
        expected = _fastai_combined_cos(pos, 0.25, 0.95, 0.85, 0.95)
        assert float(mom(step)) == pytest.approx(expected, abs=1e-6), step
    assert float(mom(warm + (100 - warm) // 4)) == pytest.approx(0.85)  # at the lr's peak
    assert optim.create_momentum_fn(_config(**overrides, one_cycle_moms=()), 10) is None
    assert optim.create_momentum_fn(_config(schedule="cosine"), 10) is None


def test_polynomial_schedule():
    # MLPerf ResNet-50 LARS: lr * (1 - t)^2 after the warm-up, t the fraction of the decay.
    lr = _schedule(schedule="polynomial", warmup="linear", warmup_length=20.0)
    expected = {10: 0.05, 20: 0.1, 60: 0.1 * 0.5**2, 80: 0.1 * 0.25**2, 100: 0.0}
    for step, value in expected.items():
        assert float(lr(step)) == pytest.approx(value, rel=1e-6, abs=1e-9), step
    cubic = _schedule(schedule="polynomial", warmup="none", schedule_power=3.0)
    assert float(cubic(50)) == pytest.approx(0.1 * 0.5**3, rel=1e-6)


def _opt_config(optimizer, **overrides):
    c = default_config()
    c.optimizer, c.schedule, c.warmup, c.lr_scale_with_batch = optimizer, "constant", "none", False
    for k, v in overrides.items():
        c[k] = v
    return c


def _tx(c):
    return optim.create_optimizer(
        c, optim.create_learning_rate_fn(c, 1), optim.create_momentum_fn(c, 1))


def _norm(x):
    return np.sqrt(np.sum(np.square(x, dtype=np.float64)))


def test_lars_trust_ratio_matches_you_et_al_2017_by_hand():
    """You et al. 2017, Alg. 1: v <- m v + lr * trust * (g + wd w), w <- w - v, trust =
    eta ||w|| / ||g + wd w||. optax.lars divides by ||g + wd w|| (the paper's Alg. 1 writes the
    bound ||g|| + wd ||w||; the two agree at wd = 0) and applies the lr before the momentum, as
    the paper does. BN/bias (1-D) get neither decay nor the trust ratio with the mask."""
    rng = np.random.RandomState(0)
    w = {"conv": {"kernel": rng.randn(3, 3, 2, 4).astype(np.float32)},
         "bn": {"scale": rng.randn(4).astype(np.float32)}}
    grads = [jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), w) for _ in range(2)]
    lr, eta, wd, mu = 0.5, 0.001, 1e-4, 0.9
    c = _opt_config("lars", learning_rate=lr, weight_decay=wd, momentum=mu,
                    lars_trust_coefficient=eta, wd_exclude_bn_and_bias=True)
    tx = _tx(c)
    params, state = jax.tree.map(jnp.asarray, w), None
    state = tx.init(params)
    hand_w = jax.tree.map(lambda x: x.astype(np.float64), w)
    hand_v = jax.tree.map(np.zeros_like, hand_w)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        u = hand_w["conv"]["kernel"] * wd + g["conv"]["kernel"]
        trust = eta * _norm(hand_w["conv"]["kernel"]) / _norm(u)
        hand_v["conv"]["kernel"] = mu * hand_v["conv"]["kernel"] + lr * trust * u
        hand_v["bn"]["scale"] = mu * hand_v["bn"]["scale"] + lr * g["bn"]["scale"]
        hand_w = jax.tree.map(lambda a, b: a - b, hand_w, hand_v)
    chex.assert_trees_all_close(params, hand_w, rtol=1e-5, atol=1e-7)
    # The paper's denominator ||g|| + wd ||w|| is the same number without weight decay.
    g, k = grads[0]["conv"]["kernel"], w["conv"]["kernel"]
    tx0 = _tx(_opt_config("lars", learning_rate=1.0, weight_decay=0.0, momentum=0.0))
    step0, _ = tx0.update({"conv": {"kernel": jnp.asarray(g)}}, tx0.init({"conv": {"kernel": k}}),
                          {"conv": {"kernel": jnp.asarray(k)}})
    paper = -(0.001 * _norm(k) / (_norm(g) + 0.0 * _norm(k))) * g
    np.testing.assert_allclose(step0["conv"]["kernel"], paper, rtol=1e-5)


def test_lamb_is_optax_lamb_without_the_mask():
    params = _abstract_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    c = _opt_config("lamb", learning_rate=0.01, weight_decay=0.05, adam_eps=1e-6)
    ours, ref = _tx(c), optax.lamb(0.01, eps=1e-6, weight_decay=0.05)
    s1, s2 = ours.init(params), ref.init(params)
    for _ in range(2):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = ref.update(grads, s2, params)
        chex.assert_trees_all_equal(u1, u2)


@pytest.mark.parametrize("one_cycle", [False, True])
def test_radam_matches_liu_et_al_2020_by_hand(one_cycle):
    """fastai's RAdam step (Liu et al. 2020, Alg. 2), in float64: while rho_t <= 5 (the first 5
    steps at b2 = 0.99) a plain step of the debiased momentum, then the rectified Adam step;
    decoupled decay lr * wd * w on the masked (ndim > 1) weights only. Under one_cycle the lr
    and b1 of step t are the schedules' values at t - 1, and fastai debiases with the current b1
    (1 - b1_t^t), as optax does."""
    rng = np.random.RandomState(0)
    w = {"conv": {"kernel": rng.randn(3, 3, 2, 4).astype(np.float32)},
         "bn": {"scale": rng.randn(4).astype(np.float32)}}
    lr, b1, b2, eps, wd = 0.01, 0.95, 0.99, 1e-6, 0.01
    c = _opt_config("radam", learning_rate=lr, weight_decay=wd, adam_b1=b1, adam_b2=b2,
                    adam_eps=eps, wd_exclude_bn_and_bias=True)
    if one_cycle:  # 8 steps: the lr peaks and b1 bottoms out at step 3 (pct_start 0.25 of 8)
        c.schedule, c.num_train_steps, c.one_cycle_moms = "one_cycle", 8, (0.95, 0.6, 0.9)
    lr_fn, b1_fn = optim.create_learning_rate_fn(c, 1), optim.create_momentum_fn(c, 1)
    tx = _tx(c)
    params = jax.tree.map(jnp.asarray, w)
    state = tx.init(params)
    hand = jax.tree.map(lambda x: x.astype(np.float64), w)
    m, v = jax.tree.map(np.zeros_like, hand), jax.tree.map(np.zeros_like, hand)
    rho_inf, plain_steps = 2 / (1 - b2) - 1, 0
    for t in range(1, 9):
        g = jax.tree.map(lambda x: rng.randn(*x.shape), w)
        updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g),
                                   state, params)
        params = optax.apply_updates(params, updates)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        plain_steps += rho <= 5
        if one_cycle:
            lr, b1 = float(lr_fn(t - 1)), float(b1_fn(t - 1))
        for key, name in (("conv", "kernel"), ("bn", "scale")):
            m[key][name] = b1 * m[key][name] + (1 - b1) * g[key][name]
            v[key][name] = b2 * v[key][name] + (1 - b2) * g[key][name] ** 2
            m_hat, v_hat = m[key][name] / (1 - b1**t), v[key][name] / (1 - b2**t)
            if rho > 5:
                r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                step = r * m_hat / (np.sqrt(v_hat) + eps)
            else:
                step = m_hat
            decay = wd * hand[key][name] if key == "conv" else 0.0
            hand[key][name] = hand[key][name] - lr * (step + decay)
        chex.assert_trees_all_close(params, hand, rtol=2e-5, atol=1e-6)
    assert plain_steps == 5  # both regimes were exercised


def test_lookahead_matches_zhang_et_al_2019_by_hand():
    """Alg. 1: k inner (fast) steps from the slow weights phi, then phi <- phi + alpha (theta -
    phi) and theta <- phi. Between syncs the inner update passes through bit for bit; the slow
    weights and the step count live in the optimizer state, the params keep their tree."""
    rng = np.random.RandomState(1)
    w = {"conv": {"kernel": rng.randn(3, 3, 2, 4).astype(np.float32)},
         "bn": {"scale": rng.randn(4).astype(np.float32)}}
    lr, k, alpha, mu = 0.1, 3, 0.5, 0.9
    c = _opt_config("sgd", learning_rate=lr, weight_decay=0.0, momentum=mu, lookahead_steps=k,
                    lookahead_alpha=alpha)
    tx, inner = _tx(c), _tx(_opt_config("sgd", learning_rate=lr, weight_decay=0.0, momentum=mu))
    params = jax.tree.map(jnp.asarray, w)
    state, inner_state = tx.init(params), inner.init(params)
    assert jax.tree.structure(state.slow) == jax.tree.structure(params)
    fast = jax.tree.map(lambda x: x.astype(np.float64), w)
    slow, velocity = jax.tree.map(np.copy, fast), jax.tree.map(np.zeros_like, fast)
    for t in range(1, 2 * k + 2):
        g = jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), w)
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        inner_updates, inner_state = inner.update(jax.tree.map(jnp.asarray, g), inner_state,
                                                  params)
        if t % k:  # the inner (momentum) step, untouched
            chex.assert_trees_all_equal(updates, inner_updates)
        params = optax.apply_updates(params, updates)
        velocity = jax.tree.map(lambda b, gi: mu * b + gi, velocity, g)
        fast = jax.tree.map(lambda p, b: p - lr * b, fast, velocity)
        if t % k == 0:
            slow = jax.tree.map(lambda s, f: s + alpha * (f - s), slow, fast)
            fast = jax.tree.map(np.copy, slow)
        chex.assert_trees_all_close(params, fast, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(state.slow, slow, rtol=1e-5, atol=1e-6)
    assert int(state.count) == 2 * k + 1


@pytest.mark.parametrize("optimizer", ["adamw", "radam", "lamb", "lars"])
def test_weight_decay_mask_applies_to_every_optimizer(optimizer):
    # Zero gradients: only the decayed (ndim > 1) weights move; BN/bias stay put.
    params = _abstract_params()
    c = _opt_config(optimizer, weight_decay=0.05, wd_exclude_bn_and_bias=True)
    tx = _tx(c)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    mask = optim.weight_decay_mask(params)
    for u, m in zip(jax.tree.leaves(updates), jax.tree.leaves(mask), strict=True):
        assert bool(jnp.all(u != 0)) if m else bool(jnp.all(u == 0))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "radam", "lamb", "lars"])
def test_frozen_and_lr_multipliers_work_for_every_optimizer(optimizer):
    params = _abstract_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.2), params)

    def update(**overrides):
        c = _opt_config(optimizer, weight_decay=1e-3, **overrides)
        tx = _tx(c)
        return tx.update(grads, tx.init(params), params)[0]

    plain = update()
    frozen = update(frozen="^fc/")
    half = update(lr_multipliers="^fc/=0.5")
    chex.assert_trees_all_equal(frozen["fc"], jax.tree.map(jnp.zeros_like, plain["fc"]))
    chex.assert_trees_all_close(half["fc"], jax.tree.map(lambda u: 0.5 * u, plain["fc"]),
                                rtol=1e-6)
    rest = lambda t: {k: v for k, v in t.items() if k != "fc"}  # noqa: E731
    chex.assert_trees_all_close(rest(frozen), rest(plain), rtol=1e-6)
    chex.assert_trees_all_close(rest(half), rest(plain), rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "radam", "lamb", "lars"])
def test_one_cycle_momentum_reaches_every_optimizers_momentum(optimizer):
    """A one_cycle momentum held at m is the fixed momentum m (SGD's and LARS's ``momentum``,
    Adam's b1), also under freezing and Lookahead; with () the momentum stays the config's."""
    params = _abstract_params()
    rng = np.random.RandomState(2)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32), params)
             for _ in range(3)]

    def run(**overrides):
        c = _opt_config(optimizer, weight_decay=1e-3, schedule="one_cycle", num_train_steps=10,
                        frozen="^fc/", lookahead_steps=2, **overrides)
        tx = _tx(c)
        state, p, out = tx.init(params), params, []
        for g in grads:
            u, state = tx.update(g, state, p)
            p = optax.apply_updates(p, u)
            out.append(u)
        return out

    key = "adam_b1" if optimizer in ("adamw", "radam", "lamb") else "momentum"
    held = run(one_cycle_moms=(0.8, 0.8, 0.8))
    # The injected b1 is a float32 array, the fixed one a Python float, so 1 - b1 rounds apart;
    # Lookahead's updates are differences of params near 1, exact to float32's ulp there.
    chex.assert_trees_all_close(held, run(one_cycle_moms=(), **{key: 0.8}), rtol=2e-5,
                                atol=2.5e-7)
    assert not np.allclose(held[-1]["conv1"]["kernel"],
                           run(one_cycle_moms=(), **{key: 0.5})[-1]["conv1"]["kernel"])
    chex.assert_trees_all_equal(held[-1]["fc"], jax.tree.map(jnp.zeros_like, held[-1]["fc"]))


def test_default_optimizer_is_the_pinned_sgd_chain_bit_for_bit():
    """With every recipe option off the optimizer is main's chain: same state tree, same bits."""
    params = _abstract_params()
    c = default_config()
    lr_fn = optim.create_learning_rate_fn(c, 10)
    ours = optim.create_optimizer(c, lr_fn)
    pinned = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr_fn, momentum=0.9))
    s1, s2 = ours.init(params), pinned.init(params)
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = pinned.update(grads, s2, params)
        chex.assert_trees_all_equal(u1, u2)
        chex.assert_trees_all_equal(s1, s2)
