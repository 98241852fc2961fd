"""Optimizer, learning-rate schedules, weight-decay mask and the (label-smoothed) loss."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Training length in steps: ``num_train_steps`` if > 0, else ``num_epochs`` epochs."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The base learning rate, scaled by batch/256 when asked (Goyal et al. 2017, Sec. 2.1)."""
    scale = config.global_batch_size / 256 if config.lr_scale_with_batch else 1.0
    return float(config.learning_rate) * scale


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """Step -> learning rate: a warm-up phase followed by a cosine, step or constant schedule.

    Boundaries are absolute steps (or epochs) from the start of training, as in He et al. 2015,
    Sec. 4.2 ("divide it by 10 at 32k and 48k iterations"), warm-up included.
    """
    lr = peak_learning_rate(config)
    unit = steps_per_epoch if config.schedule_unit == "epochs" else 1
    total = total_steps(config, steps_per_epoch)
    warm = int(round(config.warmup_length * unit)) if config.warmup != "none" else 0
    boundaries = jnp.asarray([int(round(b * unit)) for b in config.lr_boundaries] or [total + 1])
    factor = config.lr_decay_factor
    decay_len = max(1, total - warm)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        if config.schedule == "cosine":
            # Cosine from the end of warm-up to zero at the last step (Loshchilov & Hutter 2017).
            t = jnp.clip((step - warm) / decay_len, 0.0, 1.0)
            main = 0.5 * lr * (1.0 + jnp.cos(jnp.pi * t))
        elif config.schedule == "step":
            main = lr * factor ** jnp.sum(step >= boundaries).astype(jnp.float32)
        else:
            main = jnp.full_like(step, lr)
        if config.warmup == "linear":
            # Linear ramp from zero (Goyal et al. 2017, Sec. 2.2, gradual warm-up).
            warm_lr = lr * step / max(warm, 1)
        else:
            warm_lr = jnp.full_like(step, config.warmup_lr)
        return jnp.where(step < warm, warm_lr, main)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: conv and dense kernels (ndim > 1).

    BN scales/offsets and biases (all 1-D) are excluded when
    ``config.wd_exclude_bn_and_bias`` is set (Goyal et al. 2017, Sec. 5.1; the ResNet papers
    decay every parameter).
    """
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with momentum and (masked) L2 weight decay (He et al. 2015, Sec. 3.4)."""
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay > 0:
        # L2 regularisation: wd * w added to the gradient before momentum, as in the papers.
        mask = weight_decay_mask if config.wd_exclude_bn_and_bias else None
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=mask))
    parts.append(
        optax.sgd(learning_rate_fn, momentum=config.momentum or None, nesterov=config.nesterov)
    )
    return optax.chain(*parts)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy; smoothing as in Szegedy et al. 2016, Sec. 7."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
