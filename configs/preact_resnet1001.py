r"""preact_resnet1001 on CIFAR-10 with the 2015 recipe as used by He et al. 2016 (Appendix).

Command (one GPU; the offline CIFAR-10 images of shared/datasets, extracted):

    mkdir -p /tmp/cifar10 && tar -xzf ../shared/datasets/cifar10-jpg.tar.gz -C /tmp/cifar10
    python train.py --config configs/preact_resnet1001.py --workdir runs/preact_resnet1001 \
        --config.dataset=folder --config.data_dir=/tmp/cifar10

(default --config.dataset=cifar10 reads tfds' cifar10.) Recipe: batch 128, lr 0.1, divided by
10 at 32k and 48k iterations, stop at 64k (164 epochs), wd 1e-4, momentum 0.9, 4-pixel
padding + random 32x32 crop + flip, per-pixel mean subtracted; lr 0.01 for the first 400
iterations (He et al. 2016, Appendix).
Hardware: one GPU with >= 32 GiB, about 3 days.
Expected: 95.08% test accuracy (4.92% error; 4.89 +- 0.14 over 5 runs).
Source: He et al. 2016 ('Identity Mappings') Table 3.
"""

from resnet_jax.training import recipes


def get_config():
    return recipes.cifar10("preact_resnet1001", warmup_400=True)
