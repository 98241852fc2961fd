r"""preact_resnet1001 on CIFAR-10 with the 2015 recipe as used by He et al. 2016 (Appendix).

Command (one GPU; tfds' cifar10, downloaded and prepared in ~/tensorflow_datasets on
first use; --config.data_dir=<tfds data_dir> reads a copy prepared elsewhere):

    python train.py --config configs/preact_resnet1001.py --workdir runs/preact_resnet1001

Your own CIFAR-10 images instead (<folder>/train/<class>/*.png, <folder>/test/<class>/*.png):

    python train.py --config configs/preact_resnet1001.py --workdir runs/preact_resnet1001 \
        --config.dataset=folder --config.data_dir=<your CIFAR-10 image folder>

(In this repository's tests and experiments, the images of ../shared/datasets are used
instead; see docs/input_pipeline.md.)

Recipe: batch 128, lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k (164 epochs), wd
1e-4, momentum 0.9, 4-pixel padding + random 32x32 crop + flip, per-pixel mean subtracted; lr
0.01 for the first 400 iterations (He et al. 2016, Appendix).
Hardware: one GPU with >= 32 GiB, about 3 days.
Expected: 95.08% test accuracy (4.92% error; 4.89 +- 0.14 over 5 runs).
Source: He et al. 2016 ('Identity Mappings') Table 3.
"""

from resnet_jax.training import recipes


def get_config():
    return recipes.cifar10("preact_resnet1001", warmup_400=True)
