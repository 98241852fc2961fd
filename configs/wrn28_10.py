r"""Wide ResNet-28-10 on CIFAR-10 (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

Command (one GPU; tfds' cifar10, downloaded and prepared in ~/tensorflow_datasets on
first use; --config.data_dir=<tfds data_dir> reads a copy prepared elsewhere):

    python train.py --config configs/wrn28_10.py --workdir runs/wrn28_10

Your own CIFAR-10 images instead (<folder>/train/<class>/*.png, <folder>/test/<class>/*.png):

    python train.py --config configs/wrn28_10.py --workdir runs/wrn28_10 \
        --config.dataset=folder --config.data_dir=<your CIFAR-10 image folder>

(In this repository's tests and experiments, the images of ../shared/datasets are used
instead; see docs/input_pipeline.md.)

Recipe (WRN paper Sec. 3): batch 128, 200 epochs, lr 0.1 multiplied by 0.2 at epochs 60, 120 and
160, Nesterov momentum 0.9, weight decay 5e-4, flip + 4-pixel-pad crop, mean/std normalisation;
dropout 0 (the paper's 0.3 dropout between convolutions is
--config.model_kwargs.block_dropout_rate=0.3).
Hardware: one A100, about 6 h.
Expected: 96.0% test accuracy (4.00% error, no dropout; 3.89% with dropout).
Source: Zagoruyko & Komodakis 2016, Tables 4-5 (WRN-28-10).
"""

from resnet_jax.training import recipes


def get_config():
    c = recipes.cifar10("wrn28_10")
    c.dataset_options.normalization = "mean_std"
    c.num_train_steps = -1
    c.num_epochs = 200.0
    c.schedule_unit = "epochs"
    c.lr_boundaries = (60.0, 120.0, 160.0)
    c.lr_decay_factor = 0.2
    c.nesterov = True
    c.weight_decay = 5e-4
    return c
