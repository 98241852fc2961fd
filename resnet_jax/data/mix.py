"""Mixup and CutMix on the device, inside the jitted train step (timm's ``Mixup``, batch mode).

Mixup (Zhang et al. 2018) blends each image with another of the batch, ``lam * x + (1 - lam) *
x'``; CutMix (Yun et al. 2019) pastes a box of the other image whose side is ``sqrt(1 - lam)``
of the image's and corrects ``lam`` to the pasted area. As in timm's ``Mixup(mode="batch")``:
one ``lam`` per batch from Beta(alpha, alpha), mixing applied with probability ``prob``, CutMix
instead of Mixup with probability ``switch_prob`` when both alphas are set, the partner of each
example the batch reversed (``x.flip(0)``), and the soft targets the same blend of the (label-
smoothed) one-hot targets (timm's ``mixup_target``).

Per device: each device mixes its local batch with a ``lam`` and box of its own (the step's
RNG is folded with the device index), as timm does on each GPU of a distributed run; the
random draws come from the step's RNG, so a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Draw = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """timm's ``Mixup`` arguments: alphas (0: that kind off), ``prob`` of mixing a batch at all,
    ``switch_prob`` of CutMix when both alphas are > 0."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


def draw(rng: jax.Array, cfg: MixConfig, hw: tuple[int, int]) -> Draw:
    """The random choices of one batch (timm's ``_params_per_batch`` and ``rand_bbox``):
    ``apply`` (mix at all), ``use_cutmix``, ``lam_mix`` ~ Beta(alpha, alpha) of the chosen
    kind, and the CutMix box centre ``cy`` in [0, h), ``cx`` in [0, w)."""
    k_apply, k_switch, k_mixup, k_cutmix, k_cy, k_cx = jax.random.split(rng, 6)
    apply = jax.random.uniform(k_apply) < cfg.prob
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
    else:
        use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
    lam_mixup = _beta(k_mixup, cfg.mixup_alpha)
    lam_cutmix = _beta(k_cutmix, cfg.cutmix_alpha)
    return {
        "apply": apply,
        "use_cutmix": use_cutmix,
        "lam_mix": jnp.where(use_cutmix, lam_cutmix, lam_mixup),
        "cy": jax.random.randint(k_cy, (), 0, hw[0]),
        "cx": jax.random.randint(k_cx, (), 0, hw[1]),
    }


def _beta(key: jax.Array, alpha: float) -> jax.Array:
    return jax.random.beta(key, alpha, alpha) if alpha > 0 else jnp.ones((), jnp.float32)


def cutmix_box(lam: jax.Array, cy: jax.Array, cx: jax.Array, hw: tuple[int, int]):
    """timm's ``rand_bbox`` (margin 0) and ``cutmix_bbox_and_lam(correct_lam=True)``: the box
    (yl, yh, xl, xh) of side ``int(side * sqrt(1 - lam))`` centred at (cy, cx), clipped to the
    image, and ``lam`` corrected to 1 - box area / image area."""
    h, w = hw
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(h * ratio).astype(jnp.int32)
    cut_w = jnp.floor(w * ratio).astype(jnp.int32)
    yl, yh = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    xl, xh = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    lam = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / float(h * w)
    return (yl, yh, xl, xh), lam


def mix_images(images: jax.Array, d: Draw) -> tuple[jax.Array, jax.Array]:
    """``images`` [b, h, w, c] mixed with the batch reversed as ``d`` says, and the ``lam``
    (weight of each example's own label) that the targets take; lam 1 when not mixed."""
    hw = images.shape[1:3]
    (yl, yh, xl, xh), lam_box = cutmix_box(d["lam_mix"], d["cy"], d["cx"], hw)
    lam = jnp.where(d["apply"], jnp.where(d["use_cutmix"], lam_box, d["lam_mix"]), 1.0)
    x = images.astype(jnp.float32)
    partner = x[::-1]
    rows = jnp.arange(hw[0])[:, None]
    cols = jnp.arange(hw[1])[None, :]
    inside = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
    cut = jnp.where(inside[None, :, :, None], partner, x)
    blend = lam * x + (1.0 - lam) * partner
    mixed = jnp.where(d["apply"], jnp.where(d["use_cutmix"], cut, blend), x)
    return mixed.astype(images.dtype), lam


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
    """timm's ``mixup_target``: the soft targets [b, C] blended with the batch reversed."""
    return lam * targets + (1.0 - lam) * targets[::-1]


def mixer(cfg: MixConfig) -> Any:
    """``(images, rng) -> (mixed images, lam)`` for the train step, or None when mixing is off."""
    if not cfg.enabled:
        return None

    def mix(images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        return mix_images(images, draw(rng, cfg, images.shape[1:3]))

    return mix
