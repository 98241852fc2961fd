r"""resnet101 on ImageNet-1k: ResNet v1.5 with warm-up + cosine (default), or the 2015 recipe.

Commands (8 GPUs or a TPU v4-8 / v5e-8; global batch 256 = 8 x 32 per device):

    python train.py --config configs/resnet101.py --workdir runs/resnet101
    python train.py --config configs/resnet101.py:paper2015 --workdir runs/resnet101_paper2015

Larger batches scale the learning rate linearly (lr = 0.1 x batch / 256, Goyal et al. 2017):
add --config.global_batch_size=1024. Data: tfds "imagenet2012" (manual download, see
docs/training.md); --config.data_dir=<tfds data_dir>.

Hardware: 8 accelerators, about 1.5 days on 8 V100s.
Expected (ImageNet val, single 224 centre crop unless stated):
v1.5 + cosine: about 78% top-1. 2015 recipe: about 77.4% single crop; the paper's
10-crop: 78.25% top-1 / 93.95% top-5 (Table 3: 21.75 / 6.05% error).
Source: He et al. 2015 Table 3; torchvision ResNet101_Weights.IMAGENET1K_V1 (77.374 / 93.546).
Not reproduced in this repository (no ImageNet offline).
"""

from resnet_jax.training import recipes


def get_config(variant: str = ""):
    return recipes.imagenet("resnet101", variant)
