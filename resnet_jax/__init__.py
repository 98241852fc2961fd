"""resnet-jax: the ResNet family of He et al. (2015, 2016) as Flax Linen modules."""
