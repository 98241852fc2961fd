"""Models: the block vocabulary, the network, the registry of named networks and their tools."""

from resnet_jax.models.analysis import (
    abstract_variables,
    count_macs,
    count_params,
)
from resnet_jax.models.blocks import ResidualUnit, SimpleSelfAttention, SqueezeExcite
from resnet_jax.models.layout import scan_layout, unscan_layout
from resnet_jax.models.registry import *  # noqa: F403  (every named network, e.g. ResNet50)
from resnet_jax.models.registry import __all__ as _registered
from resnet_jax.models.resnet import ResNet, Stage
from resnet_jax.models.torchvision import from_torchvision, to_torchvision

__all__ = [
    "ResNet", "ResidualUnit", "SimpleSelfAttention", "SqueezeExcite", "Stage",
    "abstract_variables", "count_macs", "count_params", "from_torchvision", "to_torchvision",
    "scan_layout", "unscan_layout",
    *_registered,
]
