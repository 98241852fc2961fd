"""The README's generated parts are current, and its commands are the ones CI runs."""

import importlib.util
import re
from pathlib import Path

import resnet_jax

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _models_table_module():
    spec = importlib.util.spec_from_file_location("models_table", ROOT / "scripts/models_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_models_table_rows_are_current():
    table = _models_table_module()
    for name in ["resnet18", "resnet20", "preact_resnet164", "resnext50_32x4d"]:
        assert table.row(name) in README, "stale: run python scripts/models_table.py --write"
    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", README, re.M)
    assert listed == resnet_jax.list_models()


def test_readme_opens_with_the_main_and_test_commands():
    blocks = re.findall(r"<!-- (main|test)-command -->\n```bash\n(.+?)\n```", README)
    assert [kind for kind, _ in blocks] == ["main", "test"]
    assert "train.py --config configs/quickstart.py" in blocks[0][1]
    # Both cores (pytest-xdist, one worker per test file), then the wall-clock tests alone.
    assert blocks[1][1].endswith(
        'pytest -q -n 2 --dist loadfile -m "not serial" && pytest -q -m serial')
    assert "test-command" in (ROOT / ".ci/run").read_text()


def test_readme_layout_names_every_module_and_only_existing_ones():
    layout = re.search(r"## Layout\n.*?```\n(.+?)```", README, re.S).group(1)
    named = set(re.findall(r"([a-z0-9_]+\.py)", layout))
    files = [p for d in ("resnet_jax", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")]
    modules = {p.name for p in files if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "README Layout misses these modules"
    assert sorted(named - modules - {"train.py", "conftest.py"}) == [], "README names these"
