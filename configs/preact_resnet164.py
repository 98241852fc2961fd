r"""preact_resnet164 on CIFAR-10 with the 2015 recipe as used by He et al. 2016 (Appendix).

Command (one GPU; the offline CIFAR-10 images of shared/datasets, extracted):

    mkdir -p /tmp/cifar10 && tar -xzf ../shared/datasets/cifar10-jpg.tar.gz -C /tmp/cifar10
    python train.py --config configs/preact_resnet164.py --workdir runs/preact_resnet164 \
        --config.dataset=folder --config.data_dir=/tmp/cifar10

(default --config.dataset=cifar10 reads tfds' cifar10.) Recipe: batch 128, lr 0.1, divided by
10 at 32k and 48k iterations, stop at 64k (164 epochs), wd 1e-4, momentum 0.9, 4-pixel
padding + random 32x32 crop + flip, per-pixel mean subtracted; lr 0.01 for the first 400
iterations (He et al. 2016, Appendix).
Hardware: one GPU, about 10 h.
Expected: 94.54% test accuracy (5.46% error).
Source: He et al. 2016 ('Identity Mappings') Table 3.
"""

from resnet_jax.training import recipes


def get_config():
    return recipes.cifar10("preact_resnet164", warmup_400=True)
