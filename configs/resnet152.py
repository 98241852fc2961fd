r"""resnet152 on ImageNet-1k: ResNet v1.5 with warm-up + cosine (default), or the 2015 recipe.

Commands (8 GPUs or a TPU v4-8 / v5e-8; global batch 256 = 8 x 32 per device):

    python train.py --config configs/resnet152.py --workdir runs/resnet152
    python train.py --config configs/resnet152.py:paper2015 --workdir runs/resnet152_paper2015

Larger batches scale the learning rate linearly (lr = 0.1 x batch / 256, Goyal et al. 2017):
add --config.global_batch_size=1024. Data: tfds "imagenet2012" (manual download, see
docs/training.md); --config.data_dir=<tfds data_dir>.

Hardware: 8 accelerators, about 2 days on 8 V100s.
Expected (ImageNet val, single 224 centre crop unless stated):
v1.5 + cosine: about 78.5-79% top-1. 2015 recipe: about 78.3% single crop; the
paper's 10-crop: 78.57% top-1 / 94.29% top-5 (Table 3: 21.43 / 5.71% error).
Source: He et al. 2015 Table 3; torchvision ResNet152_Weights.IMAGENET1K_V1 (78.312 / 94.046).
Not reproduced in this repository (no ImageNet offline).
"""

from resnet_jax.training import recipes


def get_config(variant: str = ""):
    return recipes.imagenet("resnet152", variant)
