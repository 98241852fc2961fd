"""fastai's SimpleSelfAttention (``blocks.SimpleSelfAttention``) against a PyTorch twin built the
way fastai builds it (``torch.nn.utils.spectral_norm`` on a 1x1 ``Conv1d``;
``benchmarks/torch_resnet.py``). The whole network with it: tests/test_benchmarks.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models.blocks import SimpleSelfAttention

torch = pytest.importorskip("torch", reason="PyTorch is in requirements-dev.txt")
from benchmarks.torch_resnet import SimpleSelfAttention as TorchSimpleSelfAttention  # noqa: E402


def _variables(channels: int):
    module = SimpleSelfAttention()
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, channels))
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    variables = {  # a trained-looking layer: gamma away from 0, u and v not the init's
        "params": {"kernel": jax.random.normal(k1, (1, channels, channels)),
                   "gamma": jnp.array([0.3])},
        "batch_stats": {"u": jax.random.normal(k2, (channels,)),
                        "v": jax.random.normal(k3, (channels,))},
    }
    variables["batch_stats"] = jax.tree.map(lambda a: a / jnp.linalg.norm(a),
                                            variables["batch_stats"])
    return module, x, variables


def _twin(variables):
    """fastai's layer in PyTorch holding ``variables`` (strict: every key and shape)."""
    p, s = variables["params"], variables["batch_stats"]
    twin = TorchSimpleSelfAttention(p["kernel"].shape[-1])
    twin.load_state_dict({
        "gamma": torch.tensor(np.asarray(p["gamma"])),
        "conv.weight_orig": torch.tensor(np.asarray(p["kernel"]).transpose(2, 1, 0).copy()),
        "conv.weight_u": torch.tensor(np.asarray(s["u"])),
        "conv.weight_v": torch.tensor(np.asarray(s["v"])),
    })
    return twin


def test_init_is_the_identity_and_unit_vectors():
    module = SimpleSelfAttention()
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    variables = module.init(jax.random.key(1), x, train=False)
    assert variables["params"]["gamma"].tolist() == [0.0]
    for name in ("u", "v"):
        assert variables["batch_stats"][name].shape == (8,)
        np.testing.assert_allclose(np.linalg.norm(variables["batch_stats"][name]), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(module.apply(variables, x, train=True,
                                               mutable=["batch_stats"])[0], x)


@pytest.mark.parametrize("train", [True, False])
def test_matches_fastais_layer_in_pytorch(train):
    channels = 8
    module, x, variables = _variables(channels)
    s = variables["batch_stats"]
    twin = _twin(variables)
    twin.train(train)
    ours, updates = module.apply(variables, x, train=train, mutable=["batch_stats"])
    with torch.no_grad():
        theirs = twin(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))).numpy()
    assert np.std(np.asarray(ours) - np.asarray(x)) > 0.1  # the attention term is not negligible
    np.testing.assert_allclose(np.asarray(ours), theirs.transpose(0, 2, 3, 1), rtol=1e-4,
                               atol=1e-4)
    # Training runs one power iteration and keeps u and v; evaluation leaves them.
    for name in ("u", "v"):
        got = np.asarray(updates["batch_stats"][name])
        np.testing.assert_allclose(got, getattr(twin.conv, f"weight_{name}").numpy(), rtol=1e-5,
                                   atol=1e-6)
        if not train:
            np.testing.assert_array_equal(got, np.asarray(s[name]))


def test_gradient_flows_through_the_kernel_not_the_power_iteration():
    module, x, variables = _variables(8)

    def loss(params):
        out, _ = module.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
        return jnp.sum(out**2)

    grads = jax.grad(loss)(variables["params"])
    twin = _twin(variables)
    twin.train()
    (twin(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))) ** 2).sum().backward()
    np.testing.assert_allclose(np.asarray(grads["kernel"]).transpose(2, 1, 0),
                               twin.conv.weight_orig.grad.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(grads["gamma"]), twin.gamma.grad.numpy(), rtol=1e-4)


def test_in_the_network_where_fastai_puts_it():
    # xresnet(sa=True): one layer, in the first stage's last unit; C x C + 1 parameters (the
    # kernel and gamma; u and v are statistics), C = 256 out of a bottleneck first stage.
    import resnet_jax

    shapes = {
        sa: resnet_jax.abstract_variables(
            resnet_jax.create_model("seresnext50d_32x4d", self_attention=sa), (1, 64, 64, 3))
        for sa in (False, True)
    }
    assert (resnet_jax.count_params(shapes[True]["params"])
            - resnet_jax.count_params(shapes[False]["params"])) == 256 * 256 + 1
    units = {s: [k for k, v in shapes[True]["params"][s].items() if "sa" in v]
             for s in ("layer1", "layer2", "layer3", "layer4")}
    assert units == {"layer1": ["block2"], "layer2": [], "layer3": [], "layer4": []}
    assert shapes[True]["batch_stats"]["layer1"]["block2"]["sa"]["u"].shape == (256,)


def test_scanned_stages_refuse_it():
    import resnet_jax

    model = resnet_jax.create_model("resnet50d", self_attention=True, scan_units=True)
    with pytest.raises(ValueError, match="units cannot be scanned: use scan_units=False"):
        resnet_jax.abstract_variables(model, (1, 32, 32, 3))


def test_converts_to_fastais_names_and_back():
    import resnet_jax

    model = resnet_jax.create_model("resnet20", num_classes=10, self_attention=True)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.key(0))
    state = resnet_jax.to_torchvision("resnet20", variables, self_attention=True)
    sa = {k: v.shape for k, v in state.items() if ".sa." in k}
    assert sa == {"layer1.2.sa.conv.weight_orig": (16, 16, 1), "layer1.2.sa.gamma": (1,),
                  "layer1.2.sa.conv.weight_u": (16,), "layer1.2.sa.conv.weight_v": (16,)}
    back = resnet_jax.from_torchvision("resnet20", state, self_attention=True)
    jax.tree.map(np.testing.assert_array_equal, back, variables)
