r"""Quickstart: ResNet-20 on the built-in handwritten digits, offline, in about two minutes.

Command (a fresh checkout, no GPU, no network):

    python train.py --config configs/quickstart.py --workdir runs/quickstart

Hardware: any CPU (measured on 2 cores).
Expected: eval top-1 >= 0.97 on the 359 held-out digits (measured 0.9721-0.9777, docs/training.md),
after 300 steps. Plots: python -m resnet_jax.training.plot runs/quickstart

Data: scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn), upscaled to
16x16; resnet_jax.data's "digits" split holds out 20%. Recipe: the CIFAR recipe of He et al.
2015 Sec. 4.2 (SGD, momentum 0.9, wd 1e-4, lr 0.1) shortened with a cosine schedule.
"""

from resnet_jax.training.config import default_config


def get_config():
    c = default_config()
    c.model = "resnet20"
    c.dataset = "digits"
    c.train_split = "train"
    c.eval_split = "test"
    c.image_size = 16
    c.augment = "none"
    c.global_batch_size = 64
    c.num_train_steps = 300
    c.learning_rate = 0.1
    c.lr_scale_with_batch = False
    c.schedule = "cosine"
    c.warmup = "linear"
    c.schedule_unit = "steps"
    c.warmup_length = 20.0
    c.precision = "float32"
    c.log_every_steps = 20
    c.eval_every_epochs = 5.0
    c.checkpoint_every_steps = 200
    return c
