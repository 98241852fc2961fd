"""The data-parallel train step on 8 simulated devices: shard_map and pmap equal one device
on the same global batch, sync BN equals BN over the whole batch, per-device BN keeps the
running statistics identical, state buffers are donated (metric sums are not) and the step
never recompiles.

Tolerance: float32, 2 steps of SGD; results differ only by the order of the cross-device sums,
so parameters and BN statistics agree to atol=rtol=2e-5.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resnet_jax
from resnet_jax.training.parallel import DataParallel
from resnet_jax.training.step import (
    EmaTrainState,
    create_train_state,
    ema_of,
    ema_update,
    make_eval_step,
    make_train_step,
)

TOL = dict(atol=2e-5, rtol=2e-5)
TINY = dict(stage_sizes=(1, 1, 1), stage_widths=(4, 8, 8), stem_width=4)


def _model(axis_name="batch", dtype=jnp.float32):
    return resnet_jax.create_model("resnet20", num_classes=10, axis_name=axis_name, dtype=dtype,
                                   **TINY)


def _batches(n=2, b=16, seed=0):
    rng = np.random.RandomState(seed)
    return [
        {
            "image": rng.randn(b, 8, 8, 3).astype(np.float32),
            "label": rng.randint(0, 10, b).astype(np.int32),
        }
        for _ in range(n)
    ]


TX = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))


def _run(mode, devices, model, batches, per_device_bn=False):
    dp = DataParallel(mode, devices)
    init = functools.partial(create_train_state, model, TX, jax.random.PRNGKey(0), (8, 8, 3))
    state, metrics = dp.init_state(init), dp.init_metrics()
    step = dp.train_step(make_train_step(model, TX, per_device_bn=per_device_bn))
    for b in batches:
        state, metrics = step(state, metrics, dp.shard_batch(b))
    return dp, state, dp.unreplicate(metrics)


@pytest.fixture(scope="module")
def reference():
    """One device sees the whole global batch: plain BN over the whole batch."""
    _, state, metrics = _run("shard_map", jax.devices()[:1], _model(), _batches())
    return jax.device_get(state), metrics


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_data_parallel_equals_single_device_and_sync_bn(mode, reference):
    assert jax.device_count() == 8
    ref_state, ref_metrics = reference
    dp, state, metrics = _run(mode, None, _model(), _batches())
    host = dp.unreplicate(state)
    # Sync BN: batch statistics over the global batch equal BN over the whole batch.
    chex.assert_trees_all_close(ref_state.batch_stats, host.batch_stats, **TOL)
    chex.assert_trees_all_close(ref_state.params, host.params, **TOL)
    chex.assert_trees_all_close(ref_state.opt_state, host.opt_state, **TOL)
    assert int(host.step) == 2 and float(metrics["count"]) == 32
    chex.assert_trees_all_close(metrics["loss_sum"], ref_metrics["loss_sum"], rtol=1e-5, atol=0)
    # The parameters really moved (the comparison is not between two initial states).
    init = jax.device_get(jax.jit(functools.partial(
        create_train_state, _model(), TX, jax.random.PRNGKey(0), (8, 8, 3)))())
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), init.params, host.params)
    assert min(jax.tree.leaves(moved)) > 1e-4
    # Every device holds the same replica.
    leaf = jax.tree.leaves(state.batch_stats)[0]
    chex.assert_trees_all_equal(*[s.data for s in leaf.addressable_shards])


def test_per_device_bn_keeps_running_statistics_identical():
    model = _model(axis_name=None)
    batch = _batches(1)[0]
    dp, state, _ = _run("shard_map", None, model, [batch], per_device_bn=True)
    leaf = jax.tree.leaves(state.batch_stats)[0]
    chex.assert_trees_all_equal(*[s.data for s in leaf.addressable_shards])
    # The running statistics are the mean over devices of per-device (2-image) BN updates...
    init_state = jax.device_get(
        jax.jit(functools.partial(create_train_state, model, TX, jax.random.PRNGKey(0),
                                  (8, 8, 3)))())
    variables = {"params": init_state.params, "batch_stats": init_state.batch_stats}
    stats = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.PRNGKey(0)})[1])
    per_device = [stats(variables, batch["image"][2 * d : 2 * d + 2]) for d in range(8)]
    expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0),
                            *[p["batch_stats"] for p in per_device])
    got = dp.unreplicate(state).batch_stats
    chex.assert_trees_all_close(expected, got, **TOL)
    # ...which differ from statistics over the whole batch (sync BN).
    whole = stats(variables, batch["image"])["batch_stats"]
    diffs = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), whole, got)
    assert max(jax.tree.leaves(diffs)) > 1e-3


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_step_donates_buffers_and_never_recompiles(mode):
    model = _model()
    dp = DataParallel(mode)
    init = functools.partial(create_train_state, model, TX, jax.random.PRNGKey(0), (8, 8, 3))
    state, metrics = dp.init_state(init), dp.init_metrics()
    step = dp.train_step(make_train_step(model, TX))
    compiles = []
    listener = lambda event, duration, **kw: (  # noqa: E731
        compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    )
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        batches = [dp.shard_batch(b) for b in _batches(4)]
        state, metrics = step(state, metrics, batches[0])
        jax.block_until_ready(state)
        first = len(compiles)
        for b in batches[1:]:
            old_leaf, old_sum = jax.tree.leaves(state.params)[0], jax.tree.leaves(metrics)[0]
            state, metrics = step(state, metrics, b)
            assert old_leaf.is_deleted(), "state buffers are not donated"
            # The loop waits on an earlier step's sums (loop.MAX_STEPS_AHEAD): they must live.
            assert not old_sum.is_deleted(), "metric sums are donated"
        jax.block_until_ready(state)
        assert first >= 1, "the first call should compile"
        assert len(compiles) == first, f"recompiled: {compiles[first:]}"
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    if mode == "shard_map":
        assert step._cache_size() == 1


def test_float16_dynamic_loss_scale_skips_overflow():
    model = _model(dtype=jnp.float16)
    dp = DataParallel("shard_map")
    init = functools.partial(create_train_state, model, TX, jax.random.PRNGKey(0), (8, 8, 3),
                             2.0**15)
    state, metrics = dp.init_state(init), dp.init_metrics()
    step = dp.train_step(make_train_step(model, TX, dynamic_loss_scale=True, loss_scale_period=2))
    before = dp.unreplicate(state)
    bad = _batches(1)[0]
    bad["image"][0, 0, 0, 0] = np.inf  # -> non-finite gradients
    state, metrics = step(state, metrics, dp.shard_batch(bad))
    after = dp.unreplicate(state)
    chex.assert_trees_all_equal(before.params, after.params)
    assert float(after.loss_scale) == 2.0**14 and float(dp.unreplicate(metrics)["nonfinite"]) == 1
    for b in _batches(2, seed=1):  # two finite steps (period 2): the scale doubles back
        state, metrics = step(state, metrics, dp.shard_batch(b))
    after = dp.unreplicate(state)
    assert float(after.loss_scale) == 2.0**15
    chex.assert_tree_all_finite(after.params)
    assert not np.allclose(jax.tree.leaves(after.params)[0], jax.tree.leaves(before.params)[0])


def test_eval_step_masks_padding_and_averages_views():
    model = _model()
    dp = DataParallel("shard_map")
    init = functools.partial(create_train_state, model, TX, jax.random.PRNGKey(0), (8, 8, 3))
    st = jax.device_get(jax.jit(init)())
    variables = {"params": st.params, "batch_stats": st.batch_stats}
    rng = np.random.RandomState(3)
    images = rng.randn(16, 2, 8, 8, 3).astype(np.float32)
    labels = rng.randint(0, 10, 16).astype(np.int32)
    mask = np.arange(16) < 11
    out = dp.eval_step(make_eval_step(model))(
        dp.replicate(variables), dp.shard_batch({"image": images, "label": labels, "mask": mask})
    )
    logits = model.apply(variables, images.reshape(32, 8, 8, 3), train=False)
    probs = np.asarray(jax.nn.softmax(logits)).reshape(16, 2, 10).mean(1)
    top5 = np.argsort(-probs, -1)[:, :5]
    assert float(out["count"]) == 11
    assert float(out["top1_sum"]) == float(((probs.argmax(-1) == labels) & mask).sum())
    assert float(out["top5_sum"]) == float(((top5 == labels[:, None]).any(-1) & mask).sum())
    chex.assert_trees_all_close(
        float(out["loss_sum"]), float(-(np.log(probs[np.arange(16), labels]) * mask).sum()),
        rtol=1e-4, atol=0)


def _steps(model, batches, devices=None, **step_options):
    """Each state after each step (host copies), from the same initial state."""
    dp = DataParallel("shard_map", devices)
    init = functools.partial(create_train_state, model, TX, jax.random.PRNGKey(0), (8, 8, 3),
                             ema=step_options.get("ema_decay", 0) > 0)
    state, metrics = dp.init_state(init), dp.init_metrics()
    step = dp.train_step(make_train_step(model, TX, **step_options))
    states = [dp.unreplicate(state)]
    for b in batches:
        state, metrics = step(state, metrics, dp.shard_batch(b))
        states.append(dp.unreplicate(state))
    return states, dp.unreplicate(metrics)


def test_accumulating_k_micro_batches_equals_one_batch_of_k_times_the_size():
    """k=2 micro-batches of 1 per device (8 devices) = one batch of 2 per device: the same
    SGD update. BN uses its running statistics here (frozen_bn), so each example's gradient
    does not depend on the others in its batch; with batch statistics see the next test."""
    model = resnet_jax.create_model("resnet20", num_classes=10, axis_name="batch",
                                    frozen_bn=True, **TINY)
    batches = _batches(2)
    (*_, one), m1 = _steps(model, batches)
    (*_, acc), m2 = _steps(model, batches, grad_accum_steps=2)
    chex.assert_trees_all_close(one.params, acc.params, **TOL)
    chex.assert_trees_all_close(one.opt_state, acc.opt_state, **TOL)
    assert int(acc.step) == 2  # one optimizer step per train step
    chex.assert_trees_all_close(m1, m2, rtol=1e-5, atol=1e-5)  # loss, top-1 of the whole batch
    init = _steps(model, [])[0][0]
    assert max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(init.params), jax.tree.leaves(acc.params), strict=True)) > 1e-4


def test_accumulation_updates_bn_running_statistics_once_per_micro_batch():
    """With batch statistics, each micro-batch is normalised on its own and the running
    statistics take one EMA update per micro-batch, in order."""
    model = _model()
    batch = _batches(1)[0]
    (init, acc), _ = _steps(model, [batch], jax.devices()[:1], grad_accum_steps=2)
    plain = _model(axis_name=None)  # the same network outside the device axis
    stats = jax.jit(lambda v, x: plain.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.PRNGKey(0)})[1])
    variables = {"params": init.params, "batch_stats": init.batch_stats}
    for half in (batch["image"][:8], batch["image"][8:]):
        variables["batch_stats"] = stats(variables, half)["batch_stats"]
    chex.assert_trees_all_close(variables["batch_stats"], acc.batch_stats, **TOL)


def test_ema_of_params_and_bn_statistics_with_warmup():
    model = _model()
    batches = _batches(2)
    plain, _ = _steps(model, batches)
    ema, _ = _steps(model, batches, ema_decay=0.9, ema_warmup=True)
    assert ema_of(plain[0]) is None  # off: the state (and checkpoint) tree of before
    chex.assert_trees_all_equal(plain[-1].params, ema[-1].params)  # EMA never feeds back
    weights = lambda s: {"params": s.params, "batch_stats": s.batch_stats}  # noqa: E731
    expected = weights(plain[0])
    for n, s in enumerate(plain[1:]):
        d = min(0.9, (1 + n) / (10 + n))  # 0.1, then 2/11
        expected = jax.tree.map(lambda e, x, d=d: d * e + (1 - d) * x, expected, weights(s))
    chex.assert_trees_all_close(ema[-1].ema, expected, rtol=1e-6, atol=1e-7)
    # Without warm-up the decay is constant from the first update.
    first = ema_update(EmaTrainState(**vars(plain[1]), ema=weights(plain[0])), 0.9, warmup=False)
    chex.assert_trees_all_close(
        first, jax.tree.map(lambda e, x: 0.9 * e + 0.1 * x, weights(plain[0]), weights(plain[1])),
        rtol=1e-6, atol=1e-7)
