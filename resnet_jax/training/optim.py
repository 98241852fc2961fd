"""Optimizer, learning-rate schedules, weight-decay mask and the (label-smoothed) loss."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax.errors import ConfigError


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Training length in steps: ``num_train_steps`` if > 0, else ``num_epochs`` epochs."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The base learning rate, scaled by batch/256 when asked (Goyal et al. 2017, Sec. 2.1)."""
    scale = config.global_batch_size / 256 if config.lr_scale_with_batch else 1.0
    return float(config.learning_rate) * scale


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The numbers a schedule needs, in steps."""

    lr: float
    warm: int
    decay_len: int
    boundaries: jax.Array
    factor: float
    warmup_lr: float
    flat_end: int = 0  # flat_cosine: the step where the cosine starts
    power: float = 1.0  # polynomial's exponent
    cycle: tuple[float, float, float] = (0.25, 25.0, 1e5)  # one_cycle's pct_start, div, div_final


def _cosine(step: jax.Array, p: _Plan) -> jax.Array:
    # Cosine from the end of warm-up to zero at the last step (Loshchilov & Hutter 2017).
    t = jnp.clip((step - p.warm) / p.decay_len, 0.0, 1.0)
    return 0.5 * p.lr * (1.0 + jnp.cos(jnp.pi * t))


def _step_decay(step: jax.Array, p: _Plan) -> jax.Array:
    # Divide by 1/factor at each boundary (He et al. 2015, Sec. 3.4 and 4.2).
    return p.lr * p.factor ** jnp.sum(step >= p.boundaries).astype(jnp.float32)


def _flat_cosine(step: jax.Array, p: _Plan) -> jax.Array:
    # Flat at the peak, then cosine to zero: fastai's fit_flat_cos (pct_start of all steps).
    start = max(p.warm, p.flat_end)
    t = jnp.clip((step - start) / max(1, p.warm + p.decay_len - start), 0.0, 1.0)
    return 0.5 * p.lr * (1.0 + jnp.cos(jnp.pi * t))


def _polynomial(step: jax.Array, p: _Plan) -> jax.Array:
    # lr * (1 - t)^power after warm-up: MLPerf's ResNet-50 LARS schedule (power 2).
    t = jnp.clip((step - p.warm) / p.decay_len, 0.0, 1.0)
    return p.lr * (1.0 - t) ** p.power


def _one_cycle(step: jax.Array, p: _Plan) -> jax.Array:
    # fastai's fit_one_cycle (Smith 2018): half cosine up from lr/div to lr over pct_start of the
    # steps after any warm-up, then half cosine down to lr/div_final; optax's schedule is it
    # (optax divides the final value by div_final/div from lr/div).
    pct_start, div, div_final = p.cycle
    cycle = optax.cosine_onecycle_schedule(p.decay_len, p.lr, pct_start, div, div_final / div)
    return cycle(step - p.warm)


def _linear_warmup(step: jax.Array, p: _Plan) -> jax.Array:
    # Linear ramp from zero (Goyal et al. 2017, Sec. 2.2, gradual warm-up).
    return p.lr * step / max(p.warm, 1)


def _constant_warmup(step: jax.Array, p: _Plan) -> jax.Array:
    # He et al. 2015 Sec. 4.2: 0.01 until training error < 80% (~400 iterations) for ResNet-110.
    return jnp.full_like(step, p.warmup_lr)


# The registries config.schedule / config.warmup choose from (config.choices() reads them).
SCHEDULES: dict[str, Callable[[jax.Array, _Plan], jax.Array]] = {
    "cosine": _cosine,
    "step": _step_decay,
    "constant": lambda step, p: jnp.full_like(step, p.lr),
    "flat_cosine": _flat_cosine,
    "polynomial": _polynomial,
    "one_cycle": _one_cycle,
}
WARMUPS: dict[str, Callable[[jax.Array, _Plan], jax.Array]] = {
    "none": _constant_warmup,  # never used: the warm-up then has zero steps
    "linear": _linear_warmup,
    "constant": _constant_warmup,
}


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """Step -> learning rate: a warm-up phase followed by one of ``SCHEDULES``.

    Boundaries are absolute steps (or epochs) from the start of training, as in He et al. 2015,
    Sec. 4.2 ("divide it by 10 at 32k and 48k iterations"), warm-up included.
    """
    plan = _plan(config, steps_per_epoch)
    main, warmup = SCHEDULES[config.schedule], WARMUPS[config.warmup]

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        return jnp.where(step < plan.warm, warmup(step, plan), main(step, plan))

    return schedule


def _plan(config: ml_collections.ConfigDict, steps_per_epoch: int) -> _Plan:
    unit = steps_per_epoch if config.schedule_unit == "epochs" else 1
    total = total_steps(config, steps_per_epoch)
    warm = int(round(config.warmup_length * unit)) if config.warmup != "none" else 0
    boundaries = jnp.asarray([int(round(b * unit)) for b in config.lr_boundaries] or [total + 1])
    return _Plan(lr=peak_learning_rate(config), warm=warm, decay_len=max(1, total - warm),
                 boundaries=boundaries, factor=config.lr_decay_factor,
                 warmup_lr=config.warmup_lr, flat_end=int(round(config.flat_fraction * total)),
                 power=config.schedule_power,
                 cycle=(config.one_cycle_pct_start, config.one_cycle_div,
                        config.one_cycle_div_final))


def create_momentum_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule | None:
    """Step -> momentum (SGD's and LARS's ``momentum``, Adam's b1) under ``schedule=one_cycle``
    with ``one_cycle_moms`` (m0, m1, m2); None where the momentum is fixed.

    fastai's fit_one_cycle moves it against the learning rate over the same phases: half cosine
    from m0 to m1 at the lr's peak, then to m2 at the last step (m0 through any warm-up).
    """
    if config.schedule != "one_cycle" or not config.one_cycle_moms:
        return None
    p = _plan(config, steps_per_epoch)
    m0, m1, m2 = config.one_cycle_moms
    peak = int(p.cycle[0] * p.decay_len)  # the lr's peak, as in optax.cosine_onecycle_schedule
    cycle = optax.piecewise_interpolate_schedule(
        "cosine", m0, {peak: m1 / m0, p.decay_len: m2 / m1})
    return lambda step: cycle(jnp.maximum(step - p.warm, 0))  # m0 through the warm-up


def weight_decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: conv and dense kernels (ndim > 1).

    BN scales/offsets and biases (all 1-D) are excluded when
    ``config.wd_exclude_bn_and_bias`` is set (Goyal et al. 2017, Sec. 5.1; the ResNet papers
    decay every parameter).
    """
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def check_regex(key: str, pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled; a bad one is a ConfigError naming ``config.<key>``."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"config.{key}: {pattern!r} is not a valid regex: {e}") from None


def parse_lr_multipliers(spec: str) -> list[tuple[str, float]]:
    """``config.lr_multipliers`` as (regex, factor) pairs, in order (the first match wins).

    Entries are separated by ';' and split at their last '=' (a regex may contain '='), so a
    regex cannot contain ';'. A malformed entry, a bad regex or a factor that is not a finite
    number >= 0 is a ConfigError.
    """
    example = "e.g. --config.lr_multipliers='^layer4/=0.5;^(?!fc/)=0.1'"
    pairs = []
    for entry in spec.split(";"):
        entry = entry.strip()
        if not entry:  # tolerate "a=1;" and the empty default
            continue
        regex, sep, raw = entry.rpartition("=")
        if not sep or not regex:
            raise ConfigError(
                f"config.lr_multipliers: entry {entry!r} is not REGEX=FACTOR ({example})"
            )
        try:
            factor = float(raw)
        except ValueError:
            factor = math.nan
        if not math.isfinite(factor) or factor < 0:
            raise ConfigError(
                f"config.lr_multipliers: factor {raw!r} of entry {entry!r} is not a number "
                f">= 0 ({example})"
            )
        check_regex("lr_multipliers", regex)
        pairs.append((regex, factor))
    return pairs


# Labels of optax.multi_transform's parameter groups (they name the optimizer-state subtrees).
FROZEN_LABEL = "frozen"
TRAIN_LABEL = "train"


def _multiplier_label(index: int) -> str:
    return f"lr_multiplier_{index}"


def param_path(path: Sequence[Any]) -> str:
    """A jax key path as the name ``config.frozen``/``lr_multipliers`` match, e.g.
    ``layer1/block0/conv1/kernel`` (``layer1/blocks/unit/conv1/kernel`` in scanned stages)."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _param_paths(params: Any) -> list[str]:
    return [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _no_match_error(key: str, regex: str, paths: list[str]) -> ConfigError:
    # A unit's kernel and the head's last parameter: the two kinds of names people match.
    deep = next((p for p in paths if p.endswith("kernel") and p.count("/") >= 3), paths[0])
    shallow = [p for p in paths if p.count("/") <= 1] or paths
    examples = ", ".join(dict.fromkeys([deep, shallow[-1]]))
    return ConfigError(
        f"config.{key}={regex!r} matches no parameter; parameter paths look like {examples} "
        "(see docs/training.md#fine-tuning)"
    )


def param_labels(params: Any, config: ml_collections.ConfigDict) -> Any:
    """The params tree with each leaf replaced by its optimizer group: ``"frozen"`` (matched by
    ``config.frozen``), ``"lr_multiplier_<i>"`` (first matching entry i of
    ``config.lr_multipliers``) or ``"train"``.

    A regex that matches no parameter, or a ``frozen`` regex that matches every parameter,
    is a ConfigError (a typo would otherwise silently train everything, or nothing).
    """
    paths = _param_paths(params)
    if not paths:
        raise ConfigError("the model has no parameters to optimize")
    multipliers = parse_lr_multipliers(config.lr_multipliers)
    frozen = re.compile(config.frozen) if config.frozen else None
    compiled = [(re.compile(regex), regex) for regex, _ in multipliers]
    if frozen is not None:
        hits = sum(bool(frozen.search(p)) for p in paths)
        if hits == 0:
            raise _no_match_error("frozen", config.frozen, paths)
        if hits == len(paths):
            raise ConfigError(
                f"config.frozen={config.frozen!r} matches every parameter: nothing would train "
                "(a linear probe is --config.frozen='^(?!fc/)')"
            )
    for pattern, regex in compiled:
        if not any(pattern.search(p) for p in paths):
            raise _no_match_error("lr_multipliers", regex, paths)

    def label(path: str) -> str:
        if frozen is not None and frozen.search(path):
            return FROZEN_LABEL
        for i, (pattern, _) in enumerate(compiled):
            if pattern.search(path):
                return _multiplier_label(i)
        return TRAIN_LABEL

    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [label(p) for p in paths])


def _arrays(n: int) -> str:
    return f"{n} array" if n == 1 else f"{n} arrays"


def describe_param_groups(params: Any, config: ml_collections.ConfigDict) -> str:
    """One line on what ``config.frozen``/``lr_multipliers`` do to ``params`` (arrays or
    ShapeDtypeStructs), for the training log."""
    leaves = jax.tree.leaves(params)
    sizes = [math.prod(getattr(x, "shape", np.shape(x))) for x in leaves]
    total = sum(sizes)

    def count(group: str) -> tuple[int, int]:
        members = [n for n, g in zip(sizes, labels, strict=True) if g == group]
        return sum(members), len(members)

    multipliers = parse_lr_multipliers(config.lr_multipliers)
    if not config.frozen and not multipliers:
        return f"all {total:,} parameters ({len(leaves)} arrays) train at the base learning rate"
    labels = jax.tree.leaves(param_labels(params, config))
    parts = []
    if config.frozen:
        n, k = count(FROZEN_LABEL)
        parts.append(f"frozen {n:,} of {total:,} parameters ({k} of {len(leaves)} arrays)")
    for i, (regex, factor) in enumerate(multipliers):
        n, k = count(_multiplier_label(i))
        parts.append(f"lr x{factor:g} for {n:,} parameters ({_arrays(k)}) matching {regex!r}")
    n, k = count(TRAIN_LABEL)
    parts.append(f"lr x1 for {n:,} parameters ({_arrays(k)})")
    return "; ".join(parts)


def _decay_mask(config: ml_collections.ConfigDict) -> Callable[[Any], Any] | None:
    return weight_decay_mask if config.wd_exclude_bn_and_bias else None


def _momentum_follows(
    factory: Callable[..., optax.GradientTransformation],
    name: str,
    fixed: float | None,
    momentum_fn: optax.Schedule | None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """``factory(**kwargs)`` with its momentum argument ``name`` at ``fixed``, or following
    ``momentum_fn`` step by step (one_cycle); only that argument is injected, so every other
    one reaches ``factory`` as it is and the chain is the fixed one when the schedule is None."""
    if momentum_fn is None:
        return factory(**kwargs, **{name: fixed})
    return optax.inject_hyperparams(factory, static_args=tuple(kwargs))(
        **kwargs, **{name: momentum_fn})


def _sgd_parts(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None = None,
) -> list[optax.GradientTransformation]:
    parts = []
    if config.weight_decay > 0:
        # L2 regularisation: wd * w added to the gradient before momentum, as in the papers.
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask(config)))
    parts.append(_momentum_follows(optax.sgd, "momentum", config.momentum or None, momentum_fn,
                                   learning_rate=learning_rate_fn, nesterov=config.nesterov))
    return parts


def _adamw_parts(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None = None,
) -> list[optax.GradientTransformation]:
    # Decoupled decay, scaled by the lr as in PyTorch's AdamW (Loshchilov & Hutter 2019, Alg. 2).
    return [_momentum_follows(optax.adamw, "b1", config.adam_b1, momentum_fn,
                              learning_rate=learning_rate_fn, b2=config.adam_b2,
                              eps=config.adam_eps, weight_decay=config.weight_decay,
                              mask=_decay_mask(config))]


def _radam_parts(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None = None,
) -> list[optax.GradientTransformation]:
    # Liu et al. 2020: Adam with a rectified variance, plain momentum steps while rho_t < 5 (a
    # built-in warm-up); decoupled, masked decay as AdamW. With lookahead: fastai's Ranger.
    return [
        _momentum_follows(optax.scale_by_radam, "b1", config.adam_b1, momentum_fn,
                          b2=config.adam_b2, eps=config.adam_eps),
        optax.add_decayed_weights(config.weight_decay, mask=_decay_mask(config)),
        optax.scale_by_learning_rate(learning_rate_fn),
    ]


def _lamb_parts(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None = None,
) -> list[optax.GradientTransformation]:
    # optax.lamb's chain (You et al. 2020, Alg. 2), with the decay mask also excluding BN/bias
    # from layer adaptation as the reference LAMB does (optax.lamb has no trust-ratio mask).
    mask = _decay_mask(config)
    trust = optax.scale_by_trust_ratio()
    return [
        _momentum_follows(optax.scale_by_adam, "b1", config.adam_b1, momentum_fn,
                          b2=config.adam_b2, eps=config.adam_eps),
        optax.add_decayed_weights(config.weight_decay, mask=mask),
        trust if mask is None else optax.masked(trust, mask),
        optax.scale_by_learning_rate(learning_rate_fn),
    ]


def _lars_parts(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None = None,
) -> list[optax.GradientTransformation]:
    # You et al. 2017, Alg. 1; MLPerf's ResNet-50 excludes BN/bias from decay and adaptation.
    mask = _decay_mask(config) or True
    return [_momentum_follows(optax.lars, "momentum", config.momentum, momentum_fn,
                              learning_rate=learning_rate_fn, weight_decay=config.weight_decay,
                              weight_decay_mask=mask,
                              trust_coefficient=config.lars_trust_coefficient,
                              eps=config.lars_eps, trust_ratio_mask=mask,
                              nesterov=config.nesterov)]


# The registry config.optimizer chooses from: config -> the chain of one parameter group.
OPTIMIZERS: dict[str, Callable[..., list[optax.GradientTransformation]]] = {
    "sgd": _sgd_parts,
    "adamw": _adamw_parts,
    "radam": _radam_parts,
    "lamb": _lamb_parts,
    "lars": _lars_parts,
}


def optimizer_parts(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None = None,
) -> list[optax.GradientTransformation]:
    """The chain of ``config.optimizer`` for one parameter group, weight decay included."""
    return OPTIMIZERS[config.optimizer](config, learning_rate_fn, momentum_fn)


def create_optimizer(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """``config.optimizer``: by default SGD with momentum and (masked) L2 weight decay (He et
    al. 2015, Sec. 3.4); AdamW, LAMB or LARS with their decoupled, equally masked, decay.

    With ``config.frozen`` / ``config.lr_multipliers`` the parameters are partitioned
    (``optax.multi_transform``): frozen ones get a zero update and keep no optimizer state;
    a multiplier group runs the same chain with its updates scaled by its factor (its own
    momentum, so the factor scales the effective learning rate exactly).
    ``config.lookahead_steps`` k > 0 wraps all of it in Lookahead (k, ``lookahead_alpha``).
    ``momentum_fn`` (``create_momentum_fn``; None: fixed) schedules the momentum or Adam's b1.
    """
    tx = _partitioned_optimizer(config, learning_rate_fn, momentum_fn)
    if config.lookahead_steps > 0:
        tx = lookahead(tx, config.lookahead_steps, config.lookahead_alpha)
    return tx


def _partitioned_optimizer(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    momentum_fn: optax.Schedule | None,
) -> optax.GradientTransformation:
    parts = []
    multipliers = parse_lr_multipliers(config.lr_multipliers)
    if not config.frozen and not multipliers:
        # The plain chain: unchanged, so its optimizer state (and old checkpoints) still fit.
        if config.grad_clip_norm > 0:
            parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
        return optax.chain(*parts, *optimizer_parts(config, learning_rate_fn, momentum_fn))

    def labels(tree: Any) -> Any:
        return param_labels(tree, config)

    def frozen_mask(tree: Any) -> Any:
        return jax.tree.map(lambda label: label == FROZEN_LABEL, labels(tree))

    if config.grad_clip_norm > 0:
        if config.frozen:
            # Frozen gradients must not count towards the global norm that clipping bounds.
            parts.append(optax.masked(optax.set_to_zero(), frozen_mask))
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    groups = {
        TRAIN_LABEL: optax.chain(*optimizer_parts(config, learning_rate_fn, momentum_fn)),
        FROZEN_LABEL: optax.set_to_zero(),
    }
    for i, (_, factor) in enumerate(multipliers):
        groups[_multiplier_label(i)] = optax.chain(
            *optimizer_parts(config, learning_rate_fn, momentum_fn), optax.scale(factor)
        )
    parts.append(optax.multi_transform(groups, labels))
    return optax.chain(*parts)


class LookaheadState(NamedTuple):
    """The inner optimizer's state, the slow weights and the number of inner steps taken."""

    inner: optax.OptState
    slow: Any
    count: jax.Array


def lookahead(
    inner: optax.GradientTransformation, sync_period: int, slow_step_size: float
) -> optax.GradientTransformation:
    """Lookahead (Zhang et al. 2019, Alg. 1) around ``inner``: the params are the fast weights;
    every ``sync_period`` inner steps the slow weights move ``slow_step_size`` of the way to them
    and the fast weights restart there. Written here because ``optax.lookahead`` replaces the
    params by a (fast, slow) pair; keeping the slow copy in the optimizer state leaves the
    model's tree (EMA, evaluation, export, checkpoints of params) as it is."""

    def init(params: Any) -> LookaheadState:
        slow = jax.tree.map(jnp.copy, params)  # its own buffers: the state is donated
        return LookaheadState(inner.init(params), slow, jnp.zeros([], jnp.int32))

    def update(updates: Any, state: LookaheadState, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError("lookahead needs the params in update()")
        updates, inner_state = inner.update(updates, state.inner, params)
        count = state.count + 1

        def sync(operands: tuple[Any, Any]) -> tuple[Any, Any]:
            updates, slow = operands
            fast = optax.apply_updates(params, updates)
            slow = jax.tree.map(lambda s, f: s + slow_step_size * (f - s), slow, fast)
            updates = jax.tree.map(lambda u, s, p: (s - p).astype(u.dtype), updates, slow, params)
            return updates, slow

        # Only every k-th step touches the weights; between syncs the inner update passes
        # through untouched (bit for bit) and no extra pass over the params runs.
        updates, slow = jax.lax.cond(
            count % sync_period == 0, sync, lambda operands: operands, (updates, state.slow)
        )
        return updates, LookaheadState(inner_state, slow, count)

    return optax.GradientTransformation(init, update)


def one_hot_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """[b, C] float32 targets; smoothing as in Szegedy et al. 2016, Sec. 7: ``1 - eps + eps/C``
    on the label and ``eps/C`` elsewhere (timm's ``mixup_target`` smooths the same way)."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return targets


def _softmax_loss(logits: jax.Array, targets: jax.Array, threshold: float) -> jax.Array:
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _bce_loss(logits: jax.Array, targets: jax.Array, threshold: float) -> jax.Array:
    # "ResNet strikes back" (Wightman et al. 2021, Sec. 3.2): sigmoid BCE on the (mixed) targets,
    # optionally binarised at ``threshold``; the mean over classes, so the batch mean is timm's
    # BinaryCrossEntropy(reduction="mean") over all elements.
    if threshold > 0:
        targets = (targets > threshold).astype(jnp.float32)
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(-1)


# The registry config.loss chooses from: (logits [b, C], targets [b, C], threshold) -> [b].
LOSSES: dict[str, Callable[[jax.Array, jax.Array, float], jax.Array]] = {
    "softmax": _softmax_loss,
    "bce": _bce_loss,
}


def loss_per_example(
    logits: jax.Array, targets: jax.Array, kind: str = "softmax", target_threshold: float = 0.0
) -> jax.Array:
    """Per-example loss [b] of ``logits`` against soft ``targets`` [b, C] (rows summing to 1):
    softmax cross-entropy, or sigmoid BCE (``kind="bce"``; ``target_threshold`` > 0 binarises
    the targets, timm's ``target_threshold``)."""
    return LOSSES[kind](logits, targets, target_threshold)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy; smoothing as in Szegedy et al. 2016, Sec. 7."""
    return loss_per_example(logits, one_hot_targets(labels, logits.shape[-1], label_smoothing))
