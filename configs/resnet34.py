r"""resnet34 on ImageNet-1k: ResNet v1.5 with warm-up + cosine (default), or the 2015 recipe.

Commands (8 GPUs or a TPU v4-8 / v5e-8; global batch 256 = 8 x 32 per device):

    python train.py --config configs/resnet34.py --workdir runs/resnet34
    python train.py --config configs/resnet34.py:paper2015 --workdir runs/resnet34_paper2015

Larger batches scale the learning rate linearly (lr = 0.1 x batch / 256, Goyal et al. 2017):
add --config.global_batch_size=1024. Data: tfds "imagenet2012" (manual download, see
docs/training.md); --config.data_dir=<tfds data_dir>.

Hardware: 8 accelerators, about 12 h on 8 V100s.
Expected (ImageNet val, single 224 centre crop unless stated):
v1.5 + cosine: about 73-74% top-1. 2015 recipe: about 73.3% top-1 / 91.4% top-5;
the paper's 10-crop testing: 75.0% (Table 2, 25.03% error, option A shortcuts) and 75.5%
(Table 3, option B: 24.52% error).
Source: He et al. 2015 Tables 2-3; torchvision ResNet34_Weights.IMAGENET1K_V1 (73.314 / 91.420).
Not reproduced in this repository (no ImageNet offline).
"""

from resnet_jax.training import recipes


def get_config(variant: str = ""):
    return recipes.imagenet("resnet34", variant)
