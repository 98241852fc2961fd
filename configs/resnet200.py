r"""resnet200 on ImageNet-1k: ResNet v1.5 with warm-up + cosine (default), or the 2015 recipe.

Commands (8 GPUs or a TPU v4-8 / v5e-8; global batch 256 = 8 x 32 per device):

    python train.py --config configs/resnet200.py --workdir runs/resnet200
    python train.py --config configs/resnet200.py:paper2015 --workdir runs/resnet200_paper2015

Larger batches scale the learning rate linearly (lr = 0.1 x batch / 256, Goyal et al. 2017):
add --config.global_batch_size=1024. Data: tfds "imagenet2012" (manual download, see
docs/training.md); --config.data_dir=<tfds data_dir>.

Hardware: 8-16 accelerators with 32+ GiB (TPU v3-8 or 8 A100), about 3 days.
Expected (ImageNet val, single 224 centre crop unless stated):
v1.5 + cosine: about 79% top-1. 2015 recipe: the original, post-activation ResNet-200 of
He et al. 2016 Table 5 has 21.8% top-1 / 6.0% top-5 error (78.2% top-1) with scale
augmentation and a single 320x320 test crop; expect somewhat more error at the 224 centre
crop used here (Table 5's ResNet-152: 23.0% at 224 vs 21.3% at 320).
Source: He et al. 2016 ('Identity Mappings') Table 5.
Not reproduced in this repository (no ImageNet offline).
"""

from resnet_jax.training import recipes


def get_config(variant: str = ""):
    return recipes.imagenet("resnet200", variant)
