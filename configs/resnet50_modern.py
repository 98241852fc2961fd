r"""resnet50 on ImageNet-1k with a modern recipe: "ResNet strikes back" procedure A3 (timm).

Command (an accelerator pod: 8 GPUs or a TPU v4-8 / v5e-8; global batch 2048 = 8 x 256; on
fewer devices add --config.grad_accum_steps=k to keep the 2048 batch):

    python train.py --config configs/resnet50_modern.py --workdir runs/resnet50_a3

Recipe (Wightman, Touvron & Jegou 2021, "ResNet strikes back", Table 1, procedure A3): the
plain torchvision ResNet-50 (v1.5), 100 epochs at 160 px, tested at 224 px (crop 0.95); LAMB,
lr 8e-3 for batch 2048, weight decay 0.02, 5 warm-up epochs then cosine; binary cross-entropy
on Mixup (alpha 0.1) / CutMix (alpha 1.0) targets; RandAugment rand-m6-mstd0.5-inc1; no label
smoothing, no EMA, no stochastic depth. BN and biases get no weight decay (as timm's
``filter_bias_and_bn``). Data: tfds "imagenet2012" (manual download, see docs/training.md);
--config.data_dir=<tfds data_dir>.

Hardware: 8 accelerators (the paper trained on 4 V100s; 100 epochs of ResNet-50 at 160 px).
Expected: 78.1% ImageNet top-1 at 224 px (the paper's A3 figure, timm's ``resnet50.a3_in1k``).
Not run in this repository (no ImageNet, no accelerator here); every ingredient is an option
documented in docs/recipes.md and tested there on small data.
"""

from resnet_jax.training import recipes


def get_config():
    c = recipes.imagenet("resnet50")
    c.image_size = 160
    c.eval_image_size = 224
    c.dataset_options.crop_fraction = 0.95
    c.dataset_options.normalization = "imagenet"
    c.dataset_options.auto_augment = "rand-m6-mstd0.5-inc1"
    c.dataset_options.lighting_std = 0.0
    c.num_epochs = 100.0
    c.global_batch_size = 2048
    c.optimizer = "lamb"
    c.learning_rate = 8e-3
    c.lr_scale_with_batch = False
    c.weight_decay = 0.02
    c.wd_exclude_bn_and_bias = True
    c.schedule = "cosine"
    c.warmup = "linear"
    c.warmup_length = 5.0
    c.loss = "bce"
    c.mixup_alpha = 0.1
    c.cutmix_alpha = 1.0
    c.label_smoothing = 0.0
    c.checkpoint_every_steps = 1000
    return c
