"""TensorFlow as the input pipeline uses it: on the host only, every GPU hidden from it.

Every module of ``resnet_jax.data`` that runs TensorFlow imports it from here
(``from resnet_jax.data.host_tf import tf``), so whichever of them is imported first hides the
GPUs before TensorFlow could claim one.
"""

import tensorflow as tf

# tf.data only feeds the host; it must never take an accelerator from JAX.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # already initialised by someone else; nothing to hide then
    pass

__all__ = ["tf"]
