r"""Fine-tuning: pretrained weights, a new head, your own image folder (linear probe or full).

Commands (your folder holds <dir>/train/<class>/*.jpg and <dir>/val/<class>/*.jpg; the
pretrained weights are one of our workdirs, a PyTorch/safetensors state_dict file, or named
ImageNet weights such as torchvision:resnet50):

    python train.py --config configs/finetune.py:linear_probe --workdir runs/probe \
        --config.init_from=runs/pretrain --config.data_dir=<dir>
    python train.py --config configs/finetune.py:full --workdir runs/finetune \
        --config.init_from=runs/pretrain --config.data_dir=<dir>
    python train.py --config configs/finetune.py:scratch --workdir runs/scratch \
        --config.data_dir=<dir>                       # the baseline: same budget, no weights
    python train.py --config configs/finetune.py:pretrain --workdir runs/pretrain  # tfds cifar10

Variants: "linear_probe" (only the new classifier trains: everything else frozen, BN statistics
frozen; lr 0.1), "full" (every layer, lr 0.01, a tenth of training from scratch), "scratch" (the
same network from random weights, lr 0.1, the same number of steps) and "pretrain" (ResNet-20 on
CIFAR-10 for 2,400 steps, the CIFAR recipe of He et al. 2015 Sec. 4.2 shortened with a cosine).
A classifier of another size, or (our runs) for other classes, is re-initialised (the run logs
what was loaded and what was not); the pretrained run's normalisation is kept. For
torchvision's ImageNet weights by name (downloaded once, verified and cached; they bring
ImageNet's mean/std along), set the model and its input size:

    python train.py --config configs/finetune.py:full --workdir runs/r50_ft \
        --config.model=resnet50 --config.image_size=224 --config.augment=inception \
        --config.init_from=torchvision:resnet50 --config.data_dir=<dir>

(timm:resnet50.a1_in1k works the same; a file you downloaded yourself also needs
--config.dataset_options.normalization=imagenet, e.g. --config.init_from=resnet50-11ad3fa6.pth.)

Hardware: 2 CPU cores, about 2-3 minutes per fine-tuning run (pretrain: 23 minutes).
Expected (measured, docs/training.md#measured-pretrained-vs-from-scratch): after pretraining on
the 50,000 CIFAR-10 training images (78.99% on its test set), fine-tuning on 1,000 Imagenette
images (100 a class) at 32 px, on all 3,925 Imagenette validation images: full fine-tuning
60.31% top-1 (seed 1: 61.63%), linear probe 51.75%, from scratch 55.11% (seed 1: 56.46%).
"""

from resnet_jax.training import recipes
from resnet_jax.training.config import default_config

VARIANTS = ("linear_probe", "full", "scratch", "pretrain")


def get_config(variant: str = "full"):
    if variant == "pretrain":
        c = recipes.cifar10("resnet20")
        c.num_train_steps = 2400
        c.schedule = "cosine"
        c.warmup = "linear"
        c.warmup_length = 200.0
        c.eval_every_epochs = 0.0
        c.checkpoint_every_steps = 800
        c.log_every_steps = 100
        c.precision = "float32"
        return c
    if variant not in VARIANTS:
        raise ValueError(f"unknown fine-tuning variant {variant!r}; choose one of {VARIANTS}")
    c = default_config()
    c.model = "resnet20"
    c.dataset = "folder"
    c.train_split = "train"
    c.eval_split = "val"
    c.image_size = 32
    c.augment = "cifar"  # 4-pixel padding, 32x32 crop, flip (2015 Sec. 4.2)
    c.dataset_options.normalization = "per_pixel_mean"  # used by "scratch"; init_from keeps its own
    c.global_batch_size = 64
    c.num_train_steps = 600
    c.lr_scale_with_batch = False
    c.schedule = "cosine"
    c.schedule_unit = "steps"
    c.weight_decay = 1e-4
    c.momentum = 0.9
    c.precision = "float32"
    c.log_every_steps = 50
    c.eval_every_epochs = 0.0  # evaluate at the end
    c.checkpoint_every_steps = 300
    if variant == "linear_probe":
        c.frozen = "^(?!fc/)"  # every parameter but the classifier's
        c.frozen_bn_stats = True
        c.learning_rate = 0.1
        c.warmup = "none"
        c.warmup_length = 0.0
    elif variant == "full":
        c.learning_rate = 0.01
        c.warmup = "none"
        c.warmup_length = 0.0
    else:  # scratch
        c.learning_rate = 0.1
        c.warmup = "linear"
        c.warmup_length = 50.0
    return c
