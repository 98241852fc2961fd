r"""resnet1202 on CIFAR-10 with the 2015 paper's recipe (He et al. 2015, Sec. 4.2).

Command (one GPU; tfds' cifar10, downloaded and prepared in ~/tensorflow_datasets on
first use; --config.data_dir=<tfds data_dir> reads a copy prepared elsewhere):

    python train.py --config configs/resnet1202.py --workdir runs/resnet1202

Your own CIFAR-10 images instead (<folder>/train/<class>/*.png, <folder>/test/<class>/*.png):

    python train.py --config configs/resnet1202.py --workdir runs/resnet1202 \
        --config.dataset=folder --config.data_dir=<your CIFAR-10 image folder>

(In this repository's tests and experiments, the images of ../shared/datasets are used
instead; see docs/input_pipeline.md.)

Recipe: batch 128, lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k (164 epochs), wd
1e-4, momentum 0.9, 4-pixel padding + random 32x32 crop + flip, per-pixel mean subtracted.
Hardware: one GPU with >= 16 GiB, about 2 days.
Expected: 92.07% test accuracy (7.93% error; the paper attributes the gap to 110 layers to
overfitting).
Source: He et al. 2015 Table 6.
"""

from resnet_jax.training import recipes


def get_config():
    return recipes.cifar10("resnet1202")
