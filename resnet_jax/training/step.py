"""The train and eval steps: one per-device function each, and the state they update.

Each step is written once, with collectives over the axis ``"batch"``: gradients are averaged
with ``lax.pmean``, BatchNorm statistics are synchronised by the model (``axis_name="batch"``)
or averaged after the step when computed per device. ``parallel.py`` maps it over the devices
(``DataParallel``: ``jax.jit(jax.shard_map(...))`` by default, or ``jax.pmap``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax.data.mix import mix_targets
from resnet_jax.training.optim import loss_per_example, one_hot_targets

AXIS = "batch"
PyTree = Any
Batch = dict[str, Any]
Prepare = Callable[[Batch], Any]  # batch -> the network's input, on the device
Mix = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]  # (images, rng) -> (x, lam)
MIX_SALT = 0x6D6978  # folded into the step's RNG for the mixing draws ("mix")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (and is checkpointed)."""

    step: jax.Array  # int32 scalar: number of optimizer steps taken
    params: PyTree  # float32 master weights
    batch_stats: PyTree  # float32 BN running statistics
    opt_state: PyTree
    rng: jax.Array  # base PRNG key; step and device are folded in
    loss_scale: jax.Array  # float16 dynamic loss scale (1.0 and unused otherwise)
    good_steps: jax.Array  # finite-gradient steps since the last loss-scale change


@flax.struct.dataclass
class EmaTrainState(TrainState):
    """The state of a run with ``config.ema_decay`` > 0: plus the EMA of ``{"params",
    "batch_stats"}``. A subclass, not an optional field, so that runs without EMA keep
    exactly the checkpoint tree (and old checkpoints restore: orbax records even a None)."""

    ema: PyTree


def ema_of(state: TrainState) -> PyTree | None:
    """The state's EMA ``{"params", "batch_stats"}``, or None for a run without one."""
    return getattr(state, "ema", None)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
    loss_scale: float = 1.0,
    ema: bool = False,
) -> TrainState:
    """Initialises parameters, BN statistics and optimizer state (call under jit).

    ``rng`` is a raw uint32[2] key; it stays in the state for dropout/drop-path. ``ema``: keep
    an EMA of the weights, starting from the initial ones.
    """
    # Parameters are drawn with the "rbg" generator: the same distributions, but XLA:CPU
    # compiles it ~10x faster than threefry (30 s -> 3 s for ResNet-20's init).
    init_key = jax.random.wrap_key_data(
        jax.random.bits(jax.random.fold_in(rng, 1), (4,), jnp.uint32), impl="rbg"
    )
    variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=rng,
        loss_scale=jnp.asarray(loss_scale, jnp.float32),
        good_steps=jnp.zeros((), jnp.int32),
    )
    return EmaTrainState(**vars(state), ema=ema_init(params, batch_stats)) if ema else state


def ema_init(params: PyTree, batch_stats: PyTree) -> PyTree:
    """The EMA's starting point: a copy of the weights (timm's ModelEmaV2)."""
    return jax.tree.map(jnp.array, {"params": params, "batch_stats": batch_stats})


def ema_update(state: EmaTrainState, decay: float, warmup: bool) -> PyTree:
    """``ema <- d * ema + (1 - d) * new`` over params and BN statistics (timm's ModelEmaV2
    averages BN buffers too); with ``warmup``, ``d = min(decay, (1 + n) / (10 + n))`` for the
    n-th update, n = 0, 1, ... (TF's ExponentialMovingAverage ``num_updates``)."""
    d = jnp.asarray(decay, jnp.float32)
    if warmup:
        n = (state.step - 1).astype(jnp.float32)  # state.step is already incremented
        d = jnp.minimum(d, (1.0 + n) / (10.0 + n))
    new = {"params": state.params, "batch_stats": state.batch_stats}
    return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x, state.ema, new)


def init_metrics() -> dict[str, jax.Array]:
    """On-device accumulators of training metrics (sums over examples)."""
    return {
        "loss_sum": jnp.zeros((), jnp.float32),
        "top1_sum": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.float32),
        "nonfinite": jnp.zeros((), jnp.float32),  # steps with NaN/Inf gradients
    }


def _all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    per_device_bn: bool = False,
    dynamic_loss_scale: bool = False,
    loss_scale_period: int = 2000,
    prepare: Prepare | None = None,
    ema_decay: float = 0.0,
    ema_warmup: bool = False,
    grad_accum_steps: int = 1,
    mix: Mix | None = None,
    loss: str = "softmax",
    bce_target_threshold: float = 0.0,
) -> Callable[[TrainState, dict, Batch], tuple[TrainState, dict]]:
    """The per-device train step ``(state, metrics, batch) -> (state, metrics)``.

    Must run inside a mapped axis named ``"batch"`` (``DataParallel.train_step`` maps it).
    ``batch`` holds this device's ``image`` [b,H,W,3] and ``label`` [b]; ``prepare(batch)``, if
    given, makes the network's input from it on the device (uint8 pixels -> normalised and
    augmented, see ``resnet_jax.data.device.finish``). ``mix`` (``data.mix.mixer``) then mixes
    the images (Mixup/CutMix) and the targets alike; ``loss`` names ``optim.LOSSES``' entry.
    Metrics are added to the running sums; with mixing, train top-1 counts the predictions of
    each mixed target's dominant label (the example's own when ``lam >= 0.5``).
    ``ema_decay`` > 0 updates ``state.ema`` after the optimizer (see :func:`ema_update`);
    ``grad_accum_steps`` k > 1 averages the gradients of k micro-batches of b/k (see
    :func:`_accumulate`) before the one optimizer update of the step.
    """

    def grads_of(state: TrainState, images: Any, targets: jax.Array, batch_stats: PyTree,
                 rng: jax.Array) -> tuple[PyTree, tuple]:
        def loss_fn(params):
            logits, new_vars = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            value = loss_per_example(logits, targets, loss, bce_target_threshold).mean()
            return value * state.loss_scale, (value, logits, new_vars["batch_stats"])

        return jax.grad(loss_fn, has_aux=True)(state.params)

    def step_fn(state: TrainState, metrics: dict, batch: Batch) -> tuple[TrainState, dict]:
        # Different dropout/drop-path noise on each step and device, reproducible on resume.
        rng = jax.random.fold_in(state.rng, state.step)
        rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))

        # A malformed batch fails here, at trace time, naming the array and its shape.
        chex.assert_rank([batch["image"], batch["label"]], [4, 1])
        chex.assert_equal_shape_prefix([batch["image"], batch["label"]], 1)
        images = prepare(batch) if prepare is not None else batch["image"]
        if mix is not None:  # per device: its own lam and box (timm mixes each GPU's batch)
            images, lam = mix(images, jax.random.fold_in(rng, MIX_SALT))

        # Soft targets [b, C]: smoothed one-hot labels, mixed like the images.
        targets = one_hot_targets(batch["label"], model.num_classes, label_smoothing)
        if mix is not None:
            targets = mix_targets(targets, lam)
        if grad_accum_steps > 1:
            grads, (loss_value, logits, batch_stats) = _accumulate(
                grads_of, state, images, targets, rng, grad_accum_steps
            )
        else:
            grads, (loss_value, logits, batch_stats) = grads_of(
                state, images, targets, state.batch_stats, rng
            )
        # Data parallelism: every device takes the mean gradient of the global batch.
        grads = jax.lax.pmean(grads, AXIS)
        if per_device_bn:
            # EMAs are linear, so averaging them each step equals the Flax example's periodic sync.
            batch_stats = jax.lax.pmean(batch_stats, AXIS)
        grads = jax.tree.map(lambda g: g / state.loss_scale, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = _all_finite(grads)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        if ema_decay > 0:
            new_state = new_state.replace(ema=ema_update(new_state, ema_decay, ema_warmup))
        if dynamic_loss_scale:
            new_state = _apply_loss_scaling(state, new_state, finite, loss_scale_period)
        n = jnp.asarray(batch["label"].shape[0], jnp.float32)
        hit = batch["label"]
        if mix is not None:  # the dominant label of each mixed target: its own, or its partner's
            hit = jnp.where(lam >= 0.5, hit, hit[::-1])
        top1 = jnp.sum(jnp.argmax(logits, -1) == hit).astype(jnp.float32)
        step_metrics = {
            "loss_sum": loss_value * n,
            "top1_sum": top1,
            "count": n,
            # Identical on every device (gradients are averaged first): count it once.
            "nonfinite": (~finite).astype(jnp.float32) / jax.lax.psum(1, AXIS),
        }
        step_metrics = jax.lax.psum(step_metrics, AXIS)
        return new_state, jax.tree.map(jnp.add, metrics, step_metrics)

    return step_fn


def _accumulate(
    grads_of: Callable, state: TrainState, images: Any, targets: jax.Array, rng: jax.Array, k: int
) -> tuple[PyTree, tuple]:
    """Gradient accumulation in one step: ``lax.scan`` over k equal micro-batches of the
    device batch (consecutive slices), the mean of their gradients; one optimizer update.

    BatchNorm normalises each micro-batch with its own statistics (as a batch of b/k would)
    and its running statistics take k EMA updates, one per micro-batch, in order (PyTorch/timm
    accumulation behaves the same). Loss and logits are those of the whole batch.
    """
    b = targets.shape[0]
    if b % k:
        raise ValueError(f"grad_accum_steps={k} does not divide the per-device batch {b}")
    micro = jax.tree.map(lambda x: x.reshape((k, b // k, *x.shape[1:])), (images, targets))

    def body(carry, xs):
        grad_sum, batch_stats = carry
        i, (x, y) = xs
        grads, (loss, logits, batch_stats) = grads_of(
            state, x, y, batch_stats, jax.random.fold_in(rng, i)
        )
        return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), (loss, logits)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, batch_stats), (losses, logits) = jax.lax.scan(
        body, (zeros, state.batch_stats), (jnp.arange(k), micro)
    )
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    return grads, (losses.mean(), logits.reshape((b, *logits.shape[2:])), batch_stats)


def _apply_loss_scaling(
    old: TrainState, new: TrainState, finite: jax.Array, period: int
) -> TrainState:
    """Dynamic loss scaling (Micikevicius et al. 2018, Sec. 3.2): on overflow keep the old
    parameters, optimizer state and BN statistics and halve the scale; double it after
    ``period`` finite steps in a row."""
    keep = lambda n, o: jax.tree.map(lambda a, b: jnp.where(finite, a, b), n, o)  # noqa: E731
    grow = old.good_steps + 1 >= period
    if ema_of(new) is not None:
        new = new.replace(ema=keep(new.ema, old.ema))
    return new.replace(
        params=keep(new.params, old.params),
        opt_state=keep(new.opt_state, old.opt_state),
        batch_stats=keep(new.batch_stats, old.batch_stats),
        loss_scale=jnp.where(
            finite,
            jnp.where(grow, old.loss_scale * 2.0, old.loss_scale),
            jnp.maximum(old.loss_scale / 2.0, 1.0),
        ),
        good_steps=jnp.where(finite & ~grow, old.good_steps + 1, 0),
    )


def _view_log_probs(apply_fn: Callable[[jax.Array], jax.Array], images: Any) -> jax.Array:
    """Log-probabilities [b, C] of one batch in any evaluation view.

    Multi-view batches (``images`` [b, V, H, W, 3], e.g. 10-crop, or a tuple of [b, s, s, 3]
    for multi-scale) average the softmax over the views (He et al. 2015, Sec. 3.4: "average the
    scores").
    """
    if isinstance(images, tuple | list):
        # Multi-scale: the network run fully convolutionally on each scale (Table 4).
        probs = jnp.mean(
            jnp.stack([jax.nn.softmax(apply_fn(x).astype(jnp.float32)) for x in images]), axis=0
        )
        return jnp.log(jnp.maximum(probs, 1e-30))
    if images.ndim == 5:
        b, v = images.shape[:2]
        logits = apply_fn(images.reshape((b * v, *images.shape[2:])))
        probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(b, v, -1).mean(axis=1)
        return jnp.log(jnp.maximum(probs, 1e-30))
    return jax.nn.log_softmax(apply_fn(images).astype(jnp.float32))


def _eval_sums(logp: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Sums of loss, top-1, top-5 and count over the batch's real (``mask``) examples."""
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    chex.assert_rank([logp, labels, mask], [2, 1, 1])
    chex.assert_equal_shape_prefix([logp, labels, mask], 1)
    loss = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    k = min(5, logp.shape[-1])
    topk = jax.lax.top_k(logp, k)[1]
    top1 = topk[:, 0] == labels
    top5 = jnp.any(topk == labels[:, None], axis=-1)
    return {
        "loss_sum": jnp.sum(loss * mask),
        "top1_sum": jnp.sum(top1 * mask),
        "top5_sum": jnp.sum(top5 * mask),
        "count": jnp.sum(mask),
    }


def make_eval_step(
    model: nn.Module, prepare: Prepare | None = None
) -> Callable[[PyTree, Batch], dict]:
    """The per-device eval step ``(variables, batch) -> sums`` of loss, top-1, top-5, count.

    Views are averaged as in ``_view_log_probs``; padding (``mask`` False) is not counted.
    ``prepare`` as in :func:`make_train_step`.
    """

    def eval_fn(variables: PyTree, batch: Batch) -> dict:
        images = prepare(batch) if prepare is not None else batch["image"]
        apply_fn = lambda x: model.apply(variables, x, train=False)  # noqa: E731
        return jax.lax.psum(_eval_sums(_view_log_probs(apply_fn, images), batch), AXIS)

    return eval_fn


def make_ensemble_eval_step(
    models: Sequence[nn.Module], normalizers: Sequence[Callable[[jax.Array], jax.Array]]
) -> Callable[[Sequence[PyTree], Batch], dict]:
    """Eval step of an ensemble (2015 paper Sec. 3.4, Table 5): ``(variables_list, batch) ->
    {"model0": sums, ..., "ensemble": sums}``. ``batch["image"]`` holds uint8 pixels; each
    model normalises them its own way, and the ensemble averages the models' probabilities."""

    def eval_fn(variables_list: Sequence[PyTree], batch: Batch) -> dict:
        images = batch["image"]
        logps = []
        for model, normalize, variables in zip(models, normalizers, variables_list, strict=True):

            def apply_fn(x, model=model, normalize=normalize, variables=variables):
                return model.apply(variables, normalize(x), train=False)

            logps.append(_view_log_probs(apply_fn, images))
        probs = jnp.mean(jnp.stack([jnp.exp(lp) for lp in logps]), axis=0)
        sums = {f"model{i}": _eval_sums(lp, batch) for i, lp in enumerate(logps)}
        sums["ensemble"] = _eval_sums(jnp.log(jnp.maximum(probs, 1e-30)), batch)
        return jax.lax.psum(sums, AXIS)

    return eval_fn
