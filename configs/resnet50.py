r"""resnet50 on ImageNet-1k: ResNet v1.5 with warm-up + cosine (default), or the 2015 recipe.

Commands (8 GPUs or a TPU v4-8 / v5e-8; global batch 256 = 8 x 32 per device):

    python train.py --config configs/resnet50.py --workdir runs/resnet50
    python train.py --config configs/resnet50.py:paper2015 --workdir runs/resnet50_paper2015

Larger batches scale the learning rate linearly (lr = 0.1 x batch / 256, Goyal et al. 2017):
add --config.global_batch_size=1024. Data: tfds "imagenet2012" (manual download, see
docs/training.md); --config.data_dir=<tfds data_dir>.

Hardware: 8 V100/A100 or a TPU v3-8, about 1 day on 8 V100s.
Expected (ImageNet val, single 224 centre crop unless stated):
v1.5 + cosine: about 76.5% top-1 (90 epochs). 2015 recipe (v1 bottleneck): about
75-76% single crop; the paper's 10-crop: 77.15% top-1 / 93.29% top-5 (Table 3: 22.85 /
6.71% error).
Source: He et al. 2015 Table 3; torchvision ResNet50_Weights.IMAGENET1K_V1 (76.130 / 92.862, v1.5
with the step schedule); the Flax ImageNet example's README (about 76% top-1).
Not reproduced in this repository (no ImageNet offline).
"""

from resnet_jax.training import recipes


def get_config(variant: str = ""):
    return recipes.imagenet("resnet50", variant)
