"""Fine-tuning controls: frozen parameters, per-group learning-rate multipliers, frozen BN."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resnet_jax
from resnet_jax.training import optim
from resnet_jax.training.config import ConfigError, default_config, load_config, validate
from tests.variables import init_variables

LINEAR_PROBE = "^(?!fc/)"


@pytest.fixture(scope="module")
def setup():
    """resnet20 on 8x8 images: variables, a batch, and the gradient of its loss at init."""
    model = resnet_jax.create_model("resnet20", num_classes=10)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
    y = jnp.asarray([0, 3, 5, 9])
    variables = init_variables(model, x)

    @jax.jit
    def grad_fn(params):
        def loss(p):
            logits, _ = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                mutable=["batch_stats"],
            )
            return optim.cross_entropy(logits, y).mean()

        return jax.grad(loss)(params)

    return model, variables, x, grad_fn


def _config(**overrides):
    c = default_config()
    c.schedule, c.warmup, c.lr_scale_with_batch = "constant", "none", False
    c.momentum, c.weight_decay = 0.9, 1e-4
    for k, v in overrides.items():
        c[k] = v
    validate(c)
    return c


def _tx(config):
    return optim.create_optimizer(config, optim.create_learning_rate_fn(config, 10))


def _flat(tree):
    return {optim.param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _run(tx, params, grad_fn, steps):
    state = tx.init(params)
    update = jax.jit(tx.update)  # labels are computed while tracing, as in the train step
    for _ in range(steps):
        updates, state = update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_linear_probe_updates_only_fc_and_keeps_no_state_for_frozen(setup):
    _, variables, _, grad_fn = setup
    params = variables["params"]
    tx = _tx(_config(frozen=LINEAR_PROBE))
    new, state = _run(tx, params, grad_fn, 3)
    before, after = _flat(params), _flat(new)
    assert {k for k in before if k.startswith("fc/")} == {"fc/kernel", "fc/bias"}
    for k in ("fc/kernel", "fc/bias"):
        assert not np.array_equal(before[k], after[k]), k
    frozen = [k for k in before if not k.startswith("fc/")]
    chex.assert_tree_all_finite(after)  # chex equality passes NaN == NaN; np.array_equal did not
    chex.assert_trees_all_equal({k: before[k] for k in frozen}, {k: after[k] for k in frozen})
    # Momentum for fc only (plus the scalar step counters), none for the 268k frozen weights.
    fc_size = sum(v.size for k, v in before.items() if k.startswith("fc/"))
    state_size = sum(np.size(leaf) for leaf in jax.tree.leaves(state))
    assert fc_size <= state_size <= fc_size + 8
    assert "frozen 269,072 of 269,722 parameters (57 of 59 arrays)" in (
        optim.describe_param_groups(params, _config(frozen=LINEAR_PROBE))
    )


def test_scanned_model_paths_are_matched():
    model = resnet_jax.create_model("resnet20", num_classes=10, scan_units=True)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
    )["params"]
    labels = _flat(optim.param_labels(shapes, _config(frozen="^layer1/blocks/")))
    assert labels["layer1/blocks/unit/conv1/kernel"] == "frozen"
    assert labels["layer1/block0/conv1/kernel"] == "train"


def test_lr_multiplier_scales_the_update_exactly(setup):
    _, variables, _, grad_fn = setup
    params = variables["params"]
    grads = grad_fn(params)
    plain = _tx(_config())
    scaled = _tx(_config(lr_multipliers=LINEAR_PROBE + "=0.5"))
    u_plain, _ = plain.update(grads, plain.init(params), params)
    u_scaled, _ = scaled.update(grads, scaled.init(params), params)
    u_plain, u_scaled = _flat(u_plain), _flat(u_scaled)
    expected = {k: u if k.startswith("fc/") else 0.5 * u for k, u in u_plain.items()}
    chex.assert_tree_all_finite(u_scaled)
    chex.assert_trees_all_equal(u_scaled, expected)
    for k, u in u_plain.items():
        assert np.any(np.asarray(u) != 0), k


def test_first_matching_multiplier_wins(setup):
    params = setup[1]["params"]
    c = _config(frozen="^layer1/", lr_multipliers="^fc/=2;bias$=0.1")
    labels = _flat(optim.param_labels(params, c))
    assert labels["fc/bias"] == "lr_multiplier_0"
    assert labels["layer1/block0/bn1/bias"] == "frozen"
    assert labels["layer2/block0/bn1/bias"] == "lr_multiplier_1"
    assert labels["layer2/block0/bn1/scale"] == "train"
    # An entry splits at its last '=', so a regex may contain '=': "(?=x)=0=1.5" is "(?=x)=0".
    c = _config(lr_multipliers="^fc/=2;(?=x)=0=1.5")
    with pytest.raises(ConfigError, match=r"lr_multipliers='\(\?=x\)=0' matches no parameter"):
        optim.param_labels(params, c)


def test_empty_options_give_the_plain_chain(setup):
    _, variables, _, grad_fn = setup
    params = variables["params"]
    c = _config(grad_clip_norm=1.0, wd_exclude_bn_and_bias=True, lr_multipliers=" ; ")
    lr = optim.create_learning_rate_fn(c, 10)
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.add_decayed_weights(1e-4, mask=optim.weight_decay_mask),
        optax.sgd(lr, momentum=0.9, nesterov=False),
    )
    tx = optim.create_optimizer(c, lr)
    chex.assert_trees_all_equal_structs(tx.init(params), reference.init(params))
    got, _ = _run(tx, params, grad_fn, 2)
    want, _ = _run(reference, params, grad_fn, 2)
    chex.assert_tree_all_finite(got)
    chex.assert_trees_all_equal(got, want)


def test_grad_clipping_ignores_frozen_gradients(setup):
    _, variables, _, grad_fn = setup
    params = variables["params"]
    grads = grad_fn(params)
    frozen = {k: not k.startswith("fc/") for k in _flat(params)}
    zeroed = jax.tree_util.tree_map_with_path(
        lambda p, g: jnp.zeros_like(g) if frozen[optim.param_path(p)] else g, grads
    )
    fc_norm = float(optax.tree.norm(zeroed))
    clip = fc_norm / 4  # binds on the fc gradients alone, so a wrong norm changes the result
    assert float(optax.tree.norm(grads)) > 1.5 * fc_norm
    tx = _tx(_config(frozen=LINEAR_PROBE, grad_clip_norm=clip))
    reference = _tx(_config(grad_clip_norm=clip))
    u, _ = tx.update(grads, tx.init(params), params)
    u_ref, _ = reference.update(zeroed, reference.init(params), params)
    chex.assert_trees_all_close(u["fc"], u_ref["fc"], rtol=1e-6, atol=0)  # kernel and bias


def test_regex_matching_nothing_or_everything_is_an_error(setup):
    params = setup[1]["params"]
    paths = "look like layer1/block0/conv1/kernel, fc/kernel"
    with pytest.raises(ConfigError, match=rf"frozen='\^head/' matches no parameter.*{paths}"):
        _tx(_config(frozen="^head/")).init(params)
    with pytest.raises(ConfigError, match=r"lr_multipliers='classifier' matches no parameter"):
        _tx(_config(lr_multipliers="^fc/=2;classifier=0.1")).init(params)
    with pytest.raises(ConfigError, match="matches every parameter"):
        _tx(_config(frozen="kernel|scale|bias")).init(params)


@pytest.mark.parametrize(
    "override, message",
    [
        ("frozen=layer[1", r"config.frozen: 'layer\[1' is not a valid regex"),
        ("lr_multipliers=^fc/", r"entry '\^fc/' is not REGEX=FACTOR .*e.g. --config.lr_mult"),
        ("lr_multipliers==0.1", r"entry '=0.1' is not REGEX=FACTOR"),
        ("lr_multipliers=^fc/=fast", r"factor 'fast' .* not a number >= 0"),
        ("lr_multipliers=^fc/=-1", r"factor '-1' .* not a number >= 0"),
        ("lr_multipliers=(fc=2", r"config.lr_multipliers: '\(fc' is not a valid regex"),
    ],
)
def test_bad_options_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/resnet50.py", [f"--config.{override}"])


def test_options_parse_from_the_command_line():
    c = load_config(
        "configs/resnet50.py",
        ["--config.frozen=^(?!fc/)", "--config.lr_multipliers=^layer4/=0.5;^(?!fc/)=0.1",
         "--config.frozen_bn_stats=true"],
    )
    assert c.frozen == "^(?!fc/)" and c.frozen_bn_stats is True
    assert c.lr_multipliers == "^layer4/=0.5;^(?!fc/)=0.1"


@pytest.mark.parametrize("scan_units", [False, True])
def test_frozen_bn_uses_and_keeps_running_statistics(setup, scan_units):
    _, variables, x, _ = setup
    model = resnet_jax.create_model(
        "resnet20", num_classes=10, frozen_bn=True, scan_units=scan_units
    )
    init = init_variables(model, x)
    # Non-trivial running statistics, so "uses them" is not "uses mean 0, var 1".
    stats = jax.tree.map(
        lambda s: s + 0.3 * jax.random.uniform(jax.random.PRNGKey(2), s.shape), init["batch_stats"]
    )
    v = {"params": init["params"], "batch_stats": stats}
    # Same parameter names and shapes as without frozen_bn (checkpoints load either way).
    plain = resnet_jax.create_model("resnet20", num_classes=10, scan_units=scan_units)
    plain_init = init_variables(plain, x)
    chex.assert_trees_all_equal_shapes(init, plain_init)
    logits, updated = model.apply(v, x, train=True, mutable=["batch_stats"])
    eval_logits = model.apply(v, x, train=False)
    chex.assert_tree_all_finite(stats)
    chex.assert_trees_all_equal(updated["batch_stats"], stats)
    chex.assert_trees_all_equal(logits, eval_logits)
    # Without frozen_bn the same train-mode call normalises with (and updates) batch statistics.
    plain_logits, plain_updated = plain.apply(v, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(plain_logits, eval_logits)
    assert not np.array_equal(
        jax.tree.leaves(plain_updated["batch_stats"])[0], jax.tree.leaves(stats)[0]
    )
