"""The model zoo against the papers' and torchvision's published numbers, and its behaviour."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import resnet_jax
from resnet_jax.models import ResidualUnit, unscan_layout
from resnet_jax.models.blocks import drop_path
from resnet_jax.models.layers import mish
from tests.variables import init_variables


def _size(model) -> int:
    return 32 if model.stem == "cifar" else 224


# Traced with scanned units and unscanned: the same variables (test_scanned_* and
# test_torch_parity's layout tests), in 4 s instead of 15 of tracing 600 units one by one.
SCANNED_FOR_SPEED = ("resnet1202", "preact_resnet1001")


@functools.cache
def _abstract(name: str, **options):
    """(logits, variables) of ``init_with_output`` as shapes: one trace per model, no compute."""
    scanned = name in SCANNED_FOR_SPEED and not options
    model = resnet_jax.create_model(name, **options, **({"scan_units": True} if scanned else {}))
    x = jnp.zeros((2, _size(model), _size(model), 3))
    logits, variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False))
    return logits, jax.eval_shape(unscan_layout, variables) if scanned else variables


def _params(name: str, **options):
    return _abstract(name, **options)[1]["params"]


# torchvision's documented parameter counts, and 2015 paper Table 6 (CIFAR, option A).
EXACT_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336, "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962, "resnet1202": 19_421_274,
    "resnet50d": 25_576_264,  # timm's resnet50d
    # timm's seresnet50 / seresnext50_32x4d (model cards: 28.09M, 27.56M): ResNet-50's and
    # ResNeXt-50's counts plus the SE layers' (test_squeeze_excite_adds_the_papers_parameters).
    "seresnet50": 28_088_024, "seresnext50_32x4d": 27_559_896,
}


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_counts_are_exact(name):
    assert resnet_jax.count_params(_params(name)) == EXACT_PARAMS[name]


@pytest.mark.parametrize(("name", "millions"), [
    ("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85),
    ("resnet110", 1.7), ("resnet1202", 19.4),  # 2015 Table 6
    ("preact_resnet110", 1.7), ("preact_resnet164", 1.7),  # Identity Mappings Table 3
    ("wrn28_10", 36.5),  # Zagoruyko & Komodakis Table 1
    ("resnext29_8x64d", 34.4),  # Xie et al. Table 7
])
def test_parameter_counts_match_papers(name, millions):
    digits = len(str(millions).split(".")[1])
    assert round(resnet_jax.count_params(_params(name)) / 1e6, digits) == millions


def test_preact_resnet1001_matches_paper_counting_weights_only():
    # Identity Mappings Table 3 gives 10.2M for ResNet-1001: that is its conv and fc weights;
    # with its 149,216 BN scales and shifts it has 10.33M (164: 1.70M either way).
    params = _params("preact_resnet1001")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    weights = sum(np.prod(leaf.shape) for path, leaf in flat
                  if path[-1].key == "kernel" or path[-2].key == "fc")
    assert round(weights / 1e6, 1) == 10.2
    assert resnet_jax.count_params(params) == 10_327_706


# torchvision's GFLOPS (GMACs) at 224 px; 2015 Table 1 (v1); CIFAR at 32 px.
MACS = {
    "resnet18": 1.814e9, "resnet34": 3.664e9, "resnet50": 4.089e9, "resnet101": 7.801e9,
    "resnet152": 11.514e9, "resnet50_v1": 3.86e9, "resnet101_v1": 7.57e9,
    "resnet152_v1": 11.28e9, "resnet20": 40.6e6, "resnet56": 125.5e6, "resnet110": 252.9e6,
}


@pytest.mark.parametrize("name", sorted(MACS))
def test_macs_within_one_percent(name):
    model = resnet_jax.create_model(name)
    macs = resnet_jax.count_macs(model, (1, _size(model), _size(model), 3))
    assert abs(macs / MACS[name] - 1) < 0.01


def test_macs_scale_with_batch_and_paper_table1_rounding():
    model = resnet_jax.create_model("resnet50_v1")
    one = resnet_jax.count_macs(model, (1, 224, 224, 3))
    assert resnet_jax.count_macs(model, (2, 224, 224, 3)) == 2 * one
    assert round(one / 1e9, 1) == 3.9  # Table 1 prints 3.8 x 10^9 FLOPs (truncated, not rounded)


def test_squeeze_excite_adds_the_papers_parameters_and_flops():
    # Hu et al. 2018 §3.3: SE-ResNet-50 adds ~2.5M parameters (r = 16): per unit of C output
    # channels two FCs, C x C/16 and C/16 x C, with biases. Table 2's GFLOPs: SE-ResNet-50 3.87
    # (the paper's ResNet-50 is v1, stride on the 1x1), SE-ResNeXt-50 4.25.
    expected = sum(n * (2 * c * c // 16 + c // 16 + c)
                   for n, c in zip((3, 4, 6, 3), (256, 512, 1024, 2048), strict=True))
    assert expected == 2_530_992
    for se, plain in [("seresnet50", "resnet50"), ("seresnext50_32x4d", "resnext50_32x4d"),
                      ("seresnext50d_32x4d", "resnet50d")]:
        extra = resnet_jax.count_params(_params(se)) - resnet_jax.count_params(_params(plain))
        assert extra == expected + (EXACT_PARAMS["resnext50_32x4d"] - EXACT_PARAMS["resnet50"]
                                    if se == "seresnext50d_32x4d" else 0)
    for name, options, gmacs in [("seresnet50", {"stride_in_1x1": True}, 3.87),
                                 ("seresnext50_32x4d", {}, 4.25)]:
        macs = resnet_jax.count_macs(resnet_jax.create_model(name, **options), (1, 224, 224, 3))
        assert abs(macs / (gmacs * 1e9) - 1) < 0.01


def test_squeeze_excite_gate():
    # Fig. 3: y = F(x) * sigmoid(W2 relu(W1 pool(F(x)) + b1) + b2) + x; order (c) has nothing
    # after the addition, so the plain unit's output minus x is F(x).
    unit = ResidualUnit(features=16, se_reduction=4, order="relu_before_add")
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 5, 5, 16))
    variables = init_variables(unit, x, 1)
    se = variables["params"]["se"]
    assert se["fc1"]["kernel"].shape == (1, 1, 16, 8)  # C/r = 4 rounds up to 8 (timm, fastai)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero biases
    y = unit.apply(variables, x, train=False)
    plain = ResidualUnit(features=16, order="relu_before_add")
    branch_plus_x = plain.apply({k: {n: v for n, v in tree.items() if n != "se"}
                                 for k, tree in variables.items()}, x, train=False)
    f = branch_plus_x - x
    se = variables["params"]["se"]
    s = f.mean(axis=(1, 2)) @ se["fc1"]["kernel"][0, 0] + se["fc1"]["bias"]
    s = jax.nn.relu(s) @ se["fc2"]["kernel"][0, 0] + se["fc2"]["bias"]
    expected = f * jax.nn.sigmoid(s)[:, None, None, :] + x
    chex.assert_trees_all_close(y, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="se_reduction must be >= 0"):
        resnet_jax.create_model("resnet18", se_reduction=-1).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_down_pool_errors():
    # The max-pool shortcut's logits are checked against PyTorch in test_benchmarks.py.
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="down_pool must be one of"):
        resnet_jax.create_model("resnet50d", down_pool="min").init(jax.random.key(0), x,
                                                                   train=False)
    with pytest.raises(ValueError, match="set avg_down=True"):
        resnet_jax.create_model("resnet18", down_pool="max").init(jax.random.key(0), x,
                                                                  train=False)


@pytest.mark.parametrize("weight_init", ["torchvision", "fastai"])
def test_weight_init_draws_kernels_over_the_fan_out_or_the_fan_in(weight_init):
    # A ResNeXt 32x4d unit with SE: its grouped 3x3 (8 of 256 channels per group) has fan-in
    # 9 * 8 and fan-out 9 * 256, so the two schemes differ by sqrt(32) in std there.
    model = resnet_jax.ResNet(stage_sizes=(1,), stage_widths=(128,), bottleneck=True,
                              stem="deep", stem_width=32, groups=32, base_width=4,
                              se_reduction=16, num_classes=1000, weight_init=weight_init)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    kernels = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf
               in jax.tree_util.tree_leaves_with_path(params) if leaf.ndim == 4}
    grouped = kernels["['layer1']['block0']['conv2']['kernel']"]
    assert grouped.shape == (3, 3, 8, 256)
    assert len(kernels) == 9  # 3 stem convs, 3 branch convs, the shortcut, SE's fc1 and fc2
    for name, k in kernels.items():
        fan = k.shape[0] * k.shape[1] * (k.shape[2] if weight_init == "fastai" else k.shape[3])
        np.testing.assert_allclose(k.std(), np.sqrt(2 / fan), rtol=0.15, err_msg=name)
    fc = params["fc"]
    if weight_init == "fastai":  # init_cnn: kaiming_normal_ (fan-in 512) and zero biases
        np.testing.assert_allclose(fc["kernel"].std(), np.sqrt(2 / 512), rtol=0.02)
        assert not np.any(fc["bias"])
    else:  # torch.nn.Linear's U(-1/sqrt(512), 1/sqrt(512)) for both
        for leaf in (fc["kernel"], fc["bias"]):
            assert np.abs(leaf).max() <= 512**-0.5
            np.testing.assert_allclose(np.abs(leaf).max(), 512**-0.5, rtol=0.02)
    with pytest.raises(ValueError, match="weight_init must be one of"):
        model.clone(weight_init="timm").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False)


@pytest.mark.parametrize("name", resnet_jax.list_models())
def test_every_model_builds_with_the_right_output_shape(name):
    out = _abstract(name)[0]
    chex.assert_shape(out, (2, resnet_jax.create_model(name).num_classes))
    chex.assert_type(out, jnp.float32)


def test_registry_names_and_partials():
    names = resnet_jax.list_models()
    for required in ["resnet18", "resnet200", "resnet50_v1", "preact_resnet200", "plain34",
                     "resnext101_32x8d", "wide_resnet101_2", "resnet50d", "resnet1202",
                     "plain110", "preact_resnet1001", "wrn28_10", "resnext29_8x64d"]:
        assert required in names
    assert resnet_jax.list_models("preact_*") == [n for n in names if n.startswith("preact_")]
    assert resnet_jax.ResNet50(num_classes=10) == resnet_jax.create_model("resnet50",
                                                                         num_classes=10)
    assert resnet_jax.PreActResNet164().order == "full_preact"


def test_unknown_name_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet5'.*Did you mean: .*resnet56"):
        resnet_jax.create_model("resnet5")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_clases'\]"):
        resnet_jax.create_model("resnet18", num_clases=10)


def test_wrong_input_shape_is_a_clear_error():
    model = resnet_jax.create_model("resnet20")
    with pytest.raises(ValueError, match=r"NHWC.*\(batch, height, width, 3\).*transpose"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32)), train=False)
    with pytest.raises(ValueError, match=r"got shape \(32, 32, 3\)"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((32, 32, 3)), train=False)


def _shortcut_modules(params) -> list[str]:
    return sorted("/".join(p.key for p in path[:-1])
                  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                  if path[-2].key == "downsample_conv")


def test_shortcut_options():
    assert _shortcut_modules(_params("resnet20")) == []  # option A: parameter-free
    assert _shortcut_modules(_params("resnet20", shortcut="B")) == [
        "layer2/block0/downsample_conv", "layer3/block0/downsample_conv"]
    assert len(_shortcut_modules(_params("resnet20", shortcut="C"))) == 9  # every unit
    assert _shortcut_modules(_params("plain20")) == []
    # Plain and option-A nets have identical parameters: only the shortcut differs.
    assert resnet_jax.count_params(_params("plain20")) == EXACT_PARAMS["resnet20"]


def test_option_a_subsamples_and_zero_pads():
    unit = ResidualUnit(features=8, strides=2, shortcut="A", zero_init_residual=True)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 6, 4))  # non-negative, like ReLU output
    variables = init_variables(unit, x, 1)
    y = unit.apply(variables, x, train=False)  # branch is zero: y is the option-A shortcut
    expected = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (2, 2)))
    chex.assert_trees_all_close(y, expected, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("order", ["post", "relu_before_add", "relu_preact", "full_preact"])
@pytest.mark.parametrize("bottleneck", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_zero_init_residual_unit_is_identity_at_init(order, bottleneck, train):
    unit = ResidualUnit(features=4, bottleneck=bottleneck, order=order, zero_init_residual=True)
    channels = unit.out_features
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 5, 5, channels))  # post-ReLU input
    variables = init_variables(unit, x, 1)
    y = unit.apply(variables, x, train=train, mutable=["batch_stats"])[0]
    chex.assert_trees_all_close(y, x, rtol=1e-7, atol=1e-6)
    plain = ResidualUnit(features=4, bottleneck=bottleneck, order=order)
    y = plain.apply(init_variables(plain, x, 1), x, train=False)
    assert np.abs(y - x).max() > 1e-2  # without zero init the branch contributes


def test_mish_and_its_gradient_equal_jax_nn_mish():
    # The one-exp form (layers.mish) against the textbook x tanh(softplus(x)), across the range
    # where e^x underflows, where the cap at e^20 applies, and at infinity.
    x = jnp.concatenate([jnp.linspace(-100.0, 100.0, 20001), jnp.array([0.0, jnp.inf])])
    np.testing.assert_allclose(mish(x), jax.nn.mish(x), rtol=2e-6, atol=1e-7)
    grad = jax.vmap(jax.grad(mish))(x[:-1])
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(jax.nn.mish))(x[:-1]), rtol=1e-5, atol=1e-6)
    assert grad[-1] == 0.6  # d/dx at 0: tanh(log 2) = 0.6
    y = mish(x[:-1].astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and bool(jnp.isfinite(y).all())
    np.testing.assert_allclose(y.astype(jnp.float32), jax.nn.mish(x[:-1]), rtol=2e-2, atol=1e-2)


def test_activation_orders_follow_identity_mappings_fig4():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))

    def run(order: str, **override) -> jax.Array:
        unit = ResidualUnit(features=4, order=order)
        variables = init_variables(unit, x, 1)
        params = jax.tree.map(lambda a: a, variables["params"])
        for key, value in override.items():
            module, leaf = key.split(".")
            params[module][leaf] = jnp.full_like(params[module][leaf], value)
        return unit.apply({**variables, "params": params}, x, train=False)

    # (a) original: ReLU after the addition; a zero branch leaves relu(x).
    chex.assert_trees_all_close(run("post", **{"bn2.scale": 0.0}), nn.relu(x), rtol=1e-7,
                                atol=1e-6)
    # (b) BN after addition: BN(x + F) then ReLU; BN scale 0, shift 1 gives exactly 1 everywhere.
    chex.assert_trees_all_close(run("bn_after_add", **{"bn2.scale": 0.0, "bn2.bias": 1.0}), 1.0,
                                rtol=1e-7, atol=0)
    # (c) ReLU before addition: the branch is non-negative, nothing follows the addition.
    y = run("relu_before_add")
    assert np.all(np.asarray(y - x) >= -1e-6) and np.any(np.asarray(y) < 0)
    # (d) ReLU-only pre-activation and (e) full pre-activation: nothing after the addition,
    # so a zero branch gives back x itself, negative values included.
    chex.assert_trees_all_close(run("relu_preact", **{"bn2.scale": 0.0}), x, rtol=1e-7, atol=1e-6)
    chex.assert_trees_all_close(run("full_preact", **{"conv2.kernel": 0.0}), x, rtol=1e-7,
                                atol=1e-6)
    assert np.any(np.asarray(x) < 0)


def test_preact_network_structure():
    params = _params("preact_resnet164")
    # Stem conv-BN-ReLU feeds the first unit, which has no pre-activation BN of its own...
    assert "bn1" in params and "bn1" not in params["layer1"]["block0"]
    # ...later stages pre-activate before the split (the projection takes the activated input),
    assert "bn1" in params["layer2"]["block0"] and "downsample_conv" in params["layer2"]["block0"]
    # ...pre-activation projections have no BN, and a final BN precedes pooling.
    assert "downsample_bn" not in params["layer2"]["block0"]
    chex.assert_shape(params["final_bn"]["scale"], (256,))


def test_stride_placement_v1_vs_v15():
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)

    def conv_outputs(name: str) -> tuple:
        model = resnet_jax.create_model(name)
        variables = resnet_jax.abstract_variables(model, x.shape)
        _, state = jax.eval_shape(lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
            variables, x)
        block = state["intermediates"]["layer2"]["block0"]
        return tuple(block[f"conv{i}"]["__call__"][0].shape[1:3] for i in (1, 2, 3))

    # Stage 2 takes 16x16 in and gives 8x8 out; the stride sits on the 1x1 (v1, 2015 paper)
    # or on the 3x3 (v1.5, torchvision).
    assert conv_outputs("resnet50_v1") == ((8, 8), (8, 8), (8, 8))
    assert conv_outputs("resnet50") == ((16, 16), (8, 8), (8, 8))


class ModelVariantsTest(chex.TestCase):
    """The same forward passes eagerly, under jit and under pmap (chex's pmap variant gives every
    device a replica of the arguments and returns the first device's output)."""

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    def test_apply_matches_eager_and_train_mode_updates_stats(self):
        model = resnet_jax.create_model("resnet20", num_classes=10, stage_sizes=(1, 1, 1))
        x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
        variables = init_variables(model, x, 1)
        eager = model.apply(variables, x, train=False)
        logits = self.variant(lambda v, x: model.apply(v, x, train=False))(variables, x)
        chex.assert_trees_all_close(eager, logits, rtol=1e-7, atol=1e-5)
        train = self.variant(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
        _, state = train(variables, x)
        before = variables["batch_stats"]["bn1"]["mean"]
        assert not np.allclose(state["batch_stats"]["bn1"]["mean"], before)

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    def test_batchnorm_running_variance_is_unbiased_like_pytorch(self):
        bn = resnet_jax.models.layers.BatchNorm(use_running_average=False, momentum=0.0)
        x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 5)) * 3 + 1
        variables = bn.init(jax.random.PRNGKey(1), x)
        _, state = self.variant(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))(variables, x)
        flat = np.asarray(x).reshape(-1, 5)
        chex.assert_trees_all_close(state["batch_stats"]["var"], flat.var(0, ddof=1), rtol=1e-5,
                                    atol=0)
        chex.assert_trees_all_close(state["batch_stats"]["mean"], flat.mean(0), rtol=1e-5,
                                    atol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
    model = resnet_jax.create_model("resnet20", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = init_variables(model, x, 1)
    chex.assert_type(jax.tree.leaves(variables), jnp.float32)
    logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_type(jax.tree.leaves(state), jnp.float32)
    features = model.apply(variables, x, train=False, return_features=True)
    chex.assert_type([features["stage3"], logits], [jnp.bfloat16, jnp.float32])
    reference = resnet_jax.create_model("resnet20").apply(variables, x, train=False)
    chex.assert_trees_all_close(features["logits"], reference, rtol=0.1, atol=0.1)


def test_cross_device_batchnorm_equals_whole_batch_batchnorm():
    devices = np.array(jax.devices()[:4])
    mesh = Mesh(devices, ("batch",))
    synced = resnet_jax.create_model("resnet20", axis_name="batch", stage_sizes=(1, 1, 1))
    local = resnet_jax.create_model("resnet20", stage_sizes=(1, 1, 1))
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
    variables = init_variables(local, x, 1)

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("batch")),
                       out_specs=(P("batch"), P()))
    def sharded(v, xs):
        return synced.apply(v, xs, train=True, mutable=["batch_stats"])

    logits, state = jax.jit(sharded)(variables, x)  # eager shard_map: one dispatch per op
    ref_logits, ref_state = local.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-7, atol=1e-4)
    chex.assert_trees_all_close(state, ref_state, rtol=1e-7, atol=1e-5)


def test_features_and_intermediates():
    model = resnet_jax.create_model("resnet50")
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = resnet_jax.abstract_variables(model, x.shape)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, return_features=True),
                           variables, x)
    assert {k: v.shape for k, v in feats.items()} == {
        "stem": (1, 56, 56, 64), "stage1": (1, 56, 56, 256), "stage2": (1, 28, 28, 512),
        "stage3": (1, 14, 14, 1024), "stage4": (1, 7, 7, 2048), "pre_logits": (1, 2048),
        "logits": (1, 1000)}
    cifar = resnet_jax.create_model("resnet20")
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    v = resnet_jax.abstract_variables(cifar, x.shape)
    _, state = jax.eval_shape(
        lambda v, x: cifar.apply(v, x, train=False, mutable=["intermediates"]), v, x)
    responses = [leaf for path, leaf in
                 jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
                 if path[-2].key.startswith("response")]
    assert len(responses) == 19  # every 3x3 layer of ResNet-20: stem + 9 units x 2
    unit_outputs = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
                    if p[-2].key == "output"]
    assert len(unit_outputs) == 9


def test_stochastic_depth_and_dropout():
    x = jnp.ones((4000, 1))
    dropped = drop_path(x, 0.3, jax.random.PRNGKey(0))
    assert abs(float(jnp.mean(dropped == 0)) - 0.3) < 0.03
    assert abs(float(jnp.mean(dropped)) - 1.0) < 0.05  # survivors rescaled by 1/0.7

    model = resnet_jax.create_model("resnet20", drop_path_rate=0.5, dropout_rate=0.2,
                                    stage_sizes=(1, 1, 1))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    variables = init_variables(model, x, 1)

    def train(seed: int) -> jax.Array:
        return model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(seed)})[0]

    assert not np.allclose(train(0), train(1))
    chex.assert_trees_all_equal(train(2), train(2))
    chex.assert_trees_all_equal(model.apply(variables, x, train=False),
                                model.apply(variables, x, train=False))
    # Linear decay rule: unit l of L is dropped with probability l/L * rate.
    model = resnet_jax.create_model("resnet20", drop_path_rate=0.5)
    variables = init_variables(model, x, 1)
    rates = []
    model.apply(variables, x, train=True, mutable=["batch_stats"],
                rngs={"dropout": jax.random.PRNGKey(0)},
                method=lambda m, *a, **k: _collect_rates(m, rates, *a, **k))
    assert rates == pytest.approx([0.5 * (i + 1) / 9 for i in range(9)])


def _collect_rates(module, rates, x, train):
    with nn.intercept_methods(
        lambda f, args, kwargs, ctx: (
            rates.append(ctx.module.drop_path_rate)
            if isinstance(ctx.module, ResidualUnit) and ctx.method_name == "__call__" else None,
            f(*args, **kwargs))[1]):
        return module(x, train=train)


def test_resnet_d_average_pool_shortcut_handles_odd_sizes():
    model = resnet_jax.create_model("resnet50d", num_classes=3, stage_sizes=(1, 1, 1, 1))
    x = jnp.ones((1, 100, 100, 3))  # stage resolutions 25 -> 13 -> 7 -> 4: odd sizes pooled
    variables = init_variables(model, x, 1)
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    chex.assert_shape(logits, (1, 3))
    chex.assert_tree_all_finite(logits)
    assert "conv1_3" in variables["params"] and "downsample_conv" in (
        variables["params"]["layer2"]["block0"])


def test_scanned_and_rematerialised_models_equal_the_unrolled_one():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    labels = jnp.arange(4) % 10
    unrolled = resnet_jax.create_model("resnet20")
    variables = init_variables(unrolled, x, 1)
    scanned_vars = resnet_jax.scan_layout(variables)
    chex.assert_shape(scanned_vars["params"]["layer2"]["blocks"]["unit"]["conv1"]["kernel"],
                      (2, 3, 3, 32, 32))
    chex.assert_trees_all_equal(resnet_jax.unscan_layout(scanned_vars), variables)

    def loss_and_grads(model, v):
        def loss(params):
            logits, state = model.apply({**v, "params": params}, x, train=True,
                                        mutable=["batch_stats"])
            ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
            return ce, state
        (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
        eval_logits = jax.jit(lambda v: model.apply(v, x, train=False))(v)
        return value, state, grads, eval_logits

    reference = loss_and_grads(unrolled, variables)
    for options in [dict(scan_units=True), dict(remat=True), dict(scan_units=True, remat=True)]:
        model = resnet_jax.create_model("resnet20", **options)
        v = scanned_vars if options.get("scan_units") else variables
        value, state, grads, eval_logits = loss_and_grads(model, v)
        if options.get("scan_units"):
            state = resnet_jax.unscan_layout(state)
            grads = resnet_jax.unscan_layout({"params": grads})["params"]
        chex.assert_trees_all_close(value, reference[0], rtol=1e-5, atol=0)
        chex.assert_trees_all_close(eval_logits, reference[3], rtol=1e-7, atol=1e-5)
        chex.assert_trees_all_close(state, reference[1], rtol=1e-7, atol=1e-5)
        chex.assert_trees_all_close(grads, reference[2], rtol=1e-7, atol=1e-5)


def test_scanned_model_counts_and_drop_path():
    model = resnet_jax.create_model("resnet110", scan_units=True)
    params = resnet_jax.abstract_variables(model, (1, 32, 32, 3))["params"]
    assert resnet_jax.count_params(params) == EXACT_PARAMS["resnet110"]
    assert abs(resnet_jax.count_macs(model, (1, 32, 32, 3)) / MACS["resnet110"] - 1) < 0.01
    model = resnet_jax.create_model("resnet20", scan_units=True, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    variables = init_variables(model, x, 1)
    run = jax.jit(lambda key: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": key})[0])
    assert not np.allclose(run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1)))
