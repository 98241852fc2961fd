"""TensorFlow as the input pipeline uses it: on the host only, every GPU hidden from it.

Every module of ``resnet_jax.data`` that runs TensorFlow imports it from here
(``from resnet_jax.data.host_tf import tf``), so whichever of them is imported first hides the
GPUs before TensorFlow could claim one.
"""

from collections.abc import Callable

import tensorflow as tf

# tf.data only feeds the host; it must never take an accelerator from JAX.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # already initialised by someone else; nothing to hide then
    pass


def no_autograph(fn: Callable) -> Callable:
    """``fn`` for ``Dataset.map``/``flat_map`` traced as written: our functions are plain
    TensorFlow ops (no Python control flow on tensors), and AutoGraph's conversion re-parses
    each function's source, seconds of every new process's pipeline start on a small CPU."""
    return tf.autograph.experimental.do_not_convert(fn)


__all__ = ["no_autograph", "tf"]
