"""resnet-jax: the ResNet family of He et al. (2015, 2016) as Flax Linen modules.

    model = resnet_jax.create_model("resnet50", num_classes=1000)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
    run = resnet_jax.load_run("runs/quickstart")   # a trained run: spec, variables, model()
    p = resnet_jax.pretrained("resnet50", "torchvision")   # ImageNet: model, variables, spec
"""

from resnet_jax import inference
from resnet_jax.inference import InferenceSpec, load_run
from resnet_jax.models import *  # noqa: F403
from resnet_jax.models import __all__ as _models_all
from resnet_jax.weights import list_weights, pretrained

__all__ = [*_models_all, "InferenceSpec", "inference", "list_weights", "load_run", "pretrained"]
__version__ = "0.1.0"
