r"""Pre-activation ResNet-200 on ImageNet-1k (He et al. 2016, "Identity Mappings", Sec. 5).

Command (16 accelerators with >= 32 GiB, e.g. a TPU v3-16 pod slice; see docs/training.md for
running on every worker):

    python train.py --config configs/preact_resnet200.py --workdir runs/preact_resnet200 --multihost

Recipe: the 2016 paper follows fb.resnet.torch: batch 256, lr 0.1 divided by 10 at epochs 30
and 60, 90 epochs, wd 1e-4, momentum 0.9, scale + aspect-ratio augmentation ("inception").
Hardware: about 3 days on a TPU v3-16 (estimate).
Expected: 20.1% top-1 / 4.8% top-5 error (79.9% top-1) with scale + aspect-ratio augmentation,
as configured here; 20.7% / 5.3% with scale augmentation alone; the original (post-activation)
ResNet-200 gets 21.8% / 6.0%. Table 5 tests a single 320x320 crop (trained on 224 crops); this
config's own evaluation is the 224 centre crop, where Table 5's ResNet-152 has 1.7 points more
top-1 error than at 320.
Source: He et al. 2016 ('Identity Mappings') Table 5. Not reproduced here (no ImageNet offline).
"""

from resnet_jax.training import recipes


def get_config():
    c = recipes.imagenet("preact_resnet200", "paper2015")
    c.model = "preact_resnet200"
    c.augment = "inception"
    return c
