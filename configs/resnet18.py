r"""resnet18 on ImageNet-1k: ResNet v1.5 with warm-up + cosine (default), or the 2015 recipe.

Commands (8 GPUs or a TPU v4-8 / v5e-8; global batch 256 = 8 x 32 per device):

    python train.py --config configs/resnet18.py --workdir runs/resnet18
    python train.py --config configs/resnet18.py:paper2015 --workdir runs/resnet18_paper2015

Larger batches scale the learning rate linearly (lr = 0.1 x batch / 256, Goyal et al. 2017):
add --config.global_batch_size=1024. Data: tfds "imagenet2012" (manual download, see
docs/training.md); --config.data_dir=<tfds data_dir>.

Hardware: 8 accelerators, about 8 h on 8 V100s.
Expected (ImageNet val, single 224 centre crop unless stated):
v1.5 + cosine: about 70-71% top-1. 2015 recipe: about 69.8% top-1 / 89.1% top-5
(torchvision's reference weights, trained with the same step schedule); 72.1% with the
2015 paper's 10-crop testing (Table 2: 27.88% top-1 error, option A shortcuts).
Source: He et al. 2015 Table 2; torchvision ResNet18_Weights.IMAGENET1K_V1 (69.758 / 89.078).
Not reproduced in this repository (no ImageNet offline).
"""

from resnet_jax.training import recipes


def get_config(variant: str = ""):
    return recipes.imagenet("resnet18", variant)
