"""The papers' central experiments, one command each (docs/experiments.md):

    python -m resnet_jax.experiments.degradation [--quick]      # 2015 Fig. 1 / Fig. 6
    python -m resnet_jax.experiments.layer_responses [--quick]  # 2015 Fig. 7
    python -m resnet_jax.experiments.gradient_flow [--quick]    # dL/dx = dL/dy (I + dF/dx)
    python -m resnet_jax.experiments.shortcuts [--quick]        # 2015 Table 3, 2016 Table 2

Each writes PNG plots, ``results.md`` and ``results.json`` to ``--out``.
"""
