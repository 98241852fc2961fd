"""The papers' training recipes as config builders; configs/*.py call these and add the docs."""

from __future__ import annotations

import ml_collections

from resnet_jax.training.config import default_config

CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10 training split (Krizhevsky 2009); epochs <-> iterations


def imagenet(model: str, variant: str = "") -> ml_collections.ConfigDict:
    """ImageNet-1k. ``variant``:

    "" (default): ResNet v1.5 recipe of the Flax ImageNet example / Goyal et al. 2017:
      lr 0.1 x batch/256, 5 epochs linear warm-up, cosine to zero, 90 epochs, wd 1e-4.
    "paper2015": He et al. 2015 Sec. 3.4 with the v1 bottleneck (stride on the first 1x1):
      batch 256, lr 0.1 divided by 10 at epochs 30 and 60, 90 epochs (the fixed version of
      "divided by 10 when the error plateaus" used by fb.resnet.torch and torchvision).
    """
    c = default_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.train_split = "train"
    c.eval_split = "validation"
    c.image_size = 224
    c.augment = "resnet_paper" if variant == "paper2015" else "inception"
    c.eval_view = "center"
    c.global_batch_size = 256
    c.num_epochs = 90.0
    c.learning_rate = 0.1
    c.lr_scale_with_batch = True
    c.weight_decay = 1e-4
    c.momentum = 0.9
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    c.eval_every_epochs = 1.0
    if variant == "paper2015":
        if model in ("resnet50", "resnet101", "resnet152", "resnet200"):
            c.model = f"{model}_v1"
        c.schedule = "step"
        c.schedule_unit = "epochs"
        c.lr_boundaries = (30.0, 60.0)
        c.warmup = "none"
        c.warmup_length = 0.0
    elif variant == "":
        c.schedule = "cosine"
        c.schedule_unit = "epochs"
        c.warmup = "linear"
        c.warmup_length = 5.0
    else:
        raise ValueError(f"unknown ImageNet recipe variant {variant!r}: use '' or 'paper2015'")
    return c


def cifar10(model: str, *, warmup_400: bool = False) -> ml_collections.ConfigDict:
    """He et al. 2015 Sec. 4.2: batch 128, lr 0.1, /10 at 32k and 48k iterations, stop at 64k,
    wd 1e-4, momentum 0.9, 4-pixel padding + 32x32 crop + flip, per-pixel mean subtracted.

    ``warmup_400``: lr 0.01 until iteration 400, then 0.1 (ResNet-110 in Sec. 4.2; all CIFAR
    runs of He et al. 2016, Appendix).
    """
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.train_split = "train"
    c.eval_split = "test"
    c.image_size = 32
    c.augment = "cifar"
    c.eval_view = "center"
    c.dataset_options.normalization = "per_pixel_mean"
    c.global_batch_size = 128
    c.num_train_steps = 64_000
    c.learning_rate = 0.1
    c.lr_scale_with_batch = False
    c.schedule = "step"
    c.schedule_unit = "steps"
    c.lr_boundaries = (32_000.0, 48_000.0)
    c.lr_decay_factor = 0.1
    c.weight_decay = 1e-4
    c.momentum = 0.9
    if warmup_400:
        c.warmup = "constant"
        c.warmup_lr = 0.01
        c.warmup_length = 400.0
    else:
        c.warmup = "none"
        c.warmup_length = 0.0
    c.log_every_steps = 100
    c.checkpoint_every_steps = 4000
    c.eval_every_epochs = 10.0
    return c
