"""Config files, --config.key=value overrides and validation (no JAX compilation)."""

import glob
import os

import pytest

from resnet_jax.training.config import (
    ConfigError,
    apply_override,
    config_diff,
    default_config,
    load_config,
    to_dict,
    validate,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def test_unknown_key_is_a_clear_error_with_suggestion():
    c = default_config()
    with pytest.raises(ConfigError, match="unknown config key 'learning_rte'.*learning_rate"):
        apply_override(c, "--config.learning_rte=0.2")
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        apply_override(c, "--config.nope.x=1")


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_train_steps=1.5", "expected an int"),
        ("num_train_steps=abc", "expected an int"),
        ("learning_rate=fast", "expected a number"),
        ("nesterov=maybe", "expected a bool"),
        ("lr_boundaries=abc", "expected a tuple"),
    ],
)
def test_wrong_type_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(default_config(), override)


def test_overrides_apply_with_types():
    c = default_config()
    for item in (
        "--config.learning_rate=1",
        "config.nesterov=true",
        "lr_boundaries=(10, 20)",
        "model=resnet20",
        "model_kwargs.drop_path_rate=0.1",  # free-form: forwarded to create_model
        "model_kwargs.self_attention=false",  # as on typed keys: a bool, not the string
        "model_kwargs.zero_init_residual=True",
    ):
        apply_override(c, item)
    assert c.model_kwargs.self_attention is False and c.model_kwargs.zero_init_residual is True
    assert c.learning_rate == 1.0 and isinstance(c.learning_rate, float)
    assert c.nesterov is True
    assert tuple(c.lr_boundaries) == (10, 20)
    assert c.model == "resnet20" and c.model_kwargs.drop_path_rate == 0.1
    validate(c)


def test_validate_rejects_bad_values():
    c = default_config()
    c.parallel = "dp"
    with pytest.raises(ConfigError, match="parallel"):
        validate(c)
    c = default_config()
    c.lr_boundaries = (60.0, 30.0)
    with pytest.raises(ConfigError, match="lr_boundaries"):
        validate(c)
    c = default_config()
    c.label_smoothing = 1.0
    with pytest.raises(ConfigError, match="label_smoothing"):
        validate(c)


def test_config_diff_ignores_bookkeeping_only():
    a = to_dict(default_config())
    b = dict(a, log_every_steps=7, checkpoint_every_steps=3)
    assert config_diff(a, b) == {}
    c = dict(a, learning_rate=0.2, num_train_steps=5)
    assert set(config_diff(a, c)) == {"learning_rate", "num_train_steps"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_documents_itself(path):
    name = os.path.basename(path)
    config = load_config(path)
    text = open(path).read()
    doc = text.split('"""')[1]
    assert f"python train.py --config configs/{name}" in doc
    assert "Expected" in doc and "Hardware" in doc
    import resnet_jax

    assert config.model in resnet_jax.list_models()


def test_config_argument_and_paper_recipe():
    c = load_config(os.path.join(ROOT, "configs", "resnet50.py:paper2015"))
    assert (c.model, c.schedule, c.warmup) == ("resnet50_v1", "step", "none")
    c = load_config(os.path.join(ROOT, "configs", "resnet110.py"))
    assert (c.warmup, c.warmup_lr, c.warmup_length) == ("constant", 0.01, 400.0)
    assert tuple(c.lr_boundaries) == (32000, 48000) and c.num_train_steps == 64000
    assert (c.global_batch_size, c.learning_rate, c.weight_decay, c.momentum) == (
        128, 0.1, 1e-4, 0.9)


def test_imagenette_cells_validate_in_fastais_view():
    from resnet_jax.training.build import create_model

    # fastai's RandomResizedCrop in validation: resize to S + ceil(0.14 S / 8) * 8, centre S.
    nette = os.path.join(ROOT, "configs", "imagenette.py")
    for variant, resized in (("5ep_128", 152), ("20ep_128", 152), ("5ep_192", 224)):
        c = load_config(f"{nette}:{variant}")
        assert c.dataset_options.crop_fraction == pytest.approx(c.image_size / resized)
        # fastai's xse_resnext50 as its recipe builds it, through the same path as train.py.
        model = create_model(c, num_classes=10)
        assert (model.weight_init, model.activation, model.self_attention) == (
            "fastai", "mish", True)
    assert not load_config(f"{nette}:baseline").dataset_options.get("crop_fraction")
    with pytest.raises(ValueError, match="unknown Imagenette variant"):
        load_config(f"{nette}:7ep_128")


def test_train_py_reports_config_errors(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_main", os.path.join(ROOT, "train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    qs = os.path.join(ROOT, "configs", "quickstart.py")
    assert train.main(["--config", qs, "--workdir", "/nonexistent", "--config.nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err
    rc = train.main(["--config", qs, "--workdir", "/x", "--config.num_train_steps", "0.5"])
    assert rc == 2
    assert "expected an int" in capsys.readouterr().err


def test_xla_flags_setting_resolves_and_rejects_malformed(monkeypatch):
    from resnet_jax.training import xla_flags as xf

    monkeypatch.setattr(xf, "gpu_plugin_installed", lambda: True)
    assert xf.xla_flags_for("auto") == list(xf.GPU_XLA_FLAGS)
    monkeypatch.setattr(xf, "gpu_plugin_installed", lambda: False)
    assert xf.xla_flags_for("auto") == [] and xf.xla_flags_for("") == []
    assert xf.xla_flags_for("--a=1  --b") == ["--a=1", "--b"]
    c = default_config()
    apply_override(c, "xla_flags=xla_a=1")
    with pytest.raises(ConfigError, match="xla_flags.*'xla_a=1'.*--name=value"):
        validate(c)


def test_xla_flags_reach_xla_before_jax_starts_and_env_wins():
    """In a fresh process (XLA reads $XLA_FLAGS once): config flags are added, a flag the user
    already set keeps the user's value, and the backend starts with them."""
    import subprocess
    import sys

    code = (
        "import os, jax\n"
        "from resnet_jax.training.config import default_config\n"
        "from resnet_jax.training.xla_flags import apply_xla_flags\n"
        "c = default_config()\n"
        "c.xla_flags = '--xla_cpu_enable_fast_math=false --xla_cpu_use_onednn=false'\n"
        "print(apply_xla_flags(c))\n"
        "print(float(jax.numpy.ones(3).sum()))\n"
        "print(os.environ['XLA_FLAGS'])\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_use_onednn=true", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.splitlines()
    assert out == ["['--xla_cpu_enable_fast_math=false']", "3.0",
                   "--xla_cpu_use_onednn=true --xla_cpu_enable_fast_math=false"]


def test_xla_flags_after_jax_started_are_an_error_not_a_silent_no_op(monkeypatch, caplog):
    import jax

    from resnet_jax.training import xla_flags as xf

    jax.devices()  # the backend is up: XLA_FLAGS is no longer read
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    c = default_config()
    c.xla_flags = "--xla_cpu_enable_fast_math=false"
    with pytest.raises(ConfigError, match="cannot take effect: JAX has already started"):
        xf.apply_xla_flags(c)
    c.xla_flags = "auto"
    monkeypatch.setattr(xf, "gpu_plugin_installed", lambda: True)
    assert xf.apply_xla_flags(c) == [] and "cannot take effect" in caplog.text
    assert "XLA_FLAGS" not in os.environ


def test_runs_saved_before_a_key_existed_still_resume():
    """A checkpoint's config without a key added since (e.g. ``frozen``) means its default."""
    current = to_dict(default_config())
    older = {k: v for k, v in current.items() if k not in ("frozen", "init_from")}
    assert config_diff(older, current) == {}
    assert set(config_diff(older, dict(current, frozen="^layer1/"))) == {"frozen"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer=adam", r"config.optimizer = 'adam'; choose one of \('sgd', 'adamw', 'radam'"),
        ("schedule=cyclic", "config.schedule = 'cyclic'; choose one of"),
        ("one_cycle_pct_start=0", r"config.one_cycle_pct_start must be in \(0, 1\)"),
        ("one_cycle_pct_start=1.0", r"config.one_cycle_pct_start must be in \(0, 1\)"),
        ("one_cycle_div=0.5", r"config.one_cycle_div must be >= 1 \(lr / div\)"),
        ("one_cycle_div_final=0", r"config.one_cycle_div_final must be >= 1 \(lr / div_final\)"),
        ("one_cycle_moms=(0.95,0.85)", r"one_cycle_moms must be three momentums in \(0, 1\)"),
        ("one_cycle_moms=(0.95,1.0,0.95)", r"one_cycle_moms must be three.*got \(0.95, 1.0,"),
        ("adam_b1=-0.1", r"config.adam_b1 must be in \[0, 1\)"),
        ("adam_b2=1.0", r"config.adam_b2 must be in \[0, 1\)"),
        ("adam_eps=-1e-8", "config.adam_eps must be >= 0"),
        ("lars_trust_coefficient=0", "config.lars_trust_coefficient must be > 0"),
        ("lookahead_steps=-1", r"config.lookahead_steps must be >= 0 \(0: off"),
        ("lookahead_alpha=0", r"config.lookahead_alpha must be in \(0, 1\]"),
        ("lookahead_alpha=1.5", r"config.lookahead_alpha must be in \(0, 1\]"),
        ("flat_fraction=1.5", r"config.flat_fraction must be in \[0, 1\]"),
        ("schedule_power=0", "config.schedule_power must be > 0"),
        ("ema_decay=1.0", r"config.ema_decay must be in \(0, 1\).*or 0 for no EMA"),
        ("ema_decay=-0.5", r"config.ema_decay must be in \(0, 1\)"),
        ("inference_weights=ema", "inference_weights='ema' needs an EMA: set config.ema_decay"),
        ("inference_weights=best", "config.inference_weights = 'best'; choose one of"),
        ("grad_accum_steps=0", "config.grad_accum_steps=0 must be >= 1 and divide"),
        ("grad_accum_steps=3", "grad_accum_steps=3 must be >= 1 and divide config.global_batch"),
        ("eval_image_size=-1", "config.eval_image_size must be >= 0"),
        ("eval_image_size=24;dataset_options.normalization=per_pixel_mean",
         "eval_image_size differs from image_size, but per_pixel_mean"),
        ("progressive_min_size=-1", r"progressive_min_size must be in \(0, image_size=16\]"),
        ("progressive_min_size=24", r"progressive_min_size must be in \(0, image_size=16\]"),
        ("progressive_end=2", "progressive_end = 2.0 has no effect: progressive resizing is off"),
        ("progressive_min_size=8", "must satisfy 0 <= start <= end, end > 0 .in steps"),
        ("progressive_min_size=8;progressive_start=3;progressive_end=2",
         "must satisfy 0 <= start <= end"),
        ("progressive_min_size=8;progressive_end=9;progressive_multiple=0",
         "progressive_multiple must be >= 1"),
        ("progressive_min_size=8;progressive_end=9;dataset_options.normalization=per_pixel_mean",
         "progressive resizing needs a normalisation without a mean image"),
    ],
)
def test_recipe_options_reject_bad_values(override, message):
    qs = os.path.join(ROOT, "configs", "quickstart.py")
    with pytest.raises(ConfigError, match=message):
        load_config(qs, override.split(";"))


def test_recipe_options_default_off_and_accept_good_values():
    c = default_config()
    assert (c.optimizer, c.ema_decay, c.grad_accum_steps, c.inference_weights) == (
        "sgd", 0.0, 1, "raw")
    qs = os.path.join(ROOT, "configs", "quickstart.py")
    c = load_config(qs, ["optimizer=lars", "schedule=polynomial", "ema_decay=0.999",
                         "inference_weights=ema", "grad_accum_steps=4", "schedule=flat_cosine"])
    assert (c.optimizer, c.schedule, c.grad_accum_steps) == ("lars", "flat_cosine", 4)
    # Which weights inference uses is bookkeeping: it may change on resume.
    assert config_diff(to_dict(c), {**to_dict(c), "inference_weights": "raw"}) == {}


def test_progressive_resizing_schedule_by_hand():
    from resnet_jax.training.build import train_size_schedule

    qs = os.path.join(ROOT, "configs", "quickstart.py")
    # Epochs of 10 steps: 96 px for epoch 0, then 96 + 32 (b - 10) / 20 rounded to 16s: 112 from
    # batch 15 (the ramp at 104 rounds up), 128 from batch 25 (at 120); 50 steps in all.
    c = load_config(qs, ["image_size=128", "num_train_steps=-1", "num_epochs=5",
                         "schedule_unit=epochs", "progressive_min_size=96", "progressive_start=1",
                         "progressive_end=3", "progressive_multiple=16"])
    assert train_size_schedule(c, 10) == ((0, 96), (15, 112), (25, 128))
    # In steps, start = end: one jump; a min size off the multiple stays as it is.
    c = load_config(qs, ["progressive_min_size=9", "progressive_start=4", "progressive_end=4"])
    assert train_size_schedule(c, 10) == ((0, 9), (4, 16))
    c = load_config(qs, ["progressive_min_size=9", "progressive_end=301"])
    with pytest.raises(ConfigError, match="progressive_end=301.0 steps is after the run's end"):
        train_size_schedule(c, 10)


def test_train_py_reports_recipe_errors(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_main", os.path.join(ROOT, "train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    qs = os.path.join(ROOT, "configs", "quickstart.py")
    assert train.main(["--config", qs, "--workdir", "/x", "--config.ema_decay=1.5"]) == 2
    assert capsys.readouterr().err.startswith("error: config.ema_decay must be in (0, 1)")
