"""The facts in the docs that can drift mechanically still hold.

- Every ``--config.KEY`` named in ``docs/*.md``, the README, the config files, the package's
  own messages and the benchmarks exists in ``default_config()``; a sub-key of a
  ``FREE_FORM_KEYS`` key is free in the config but must be an option of what it is forwarded
  to (``model_kwargs.drop_path_rate``: a ``ResNet`` field; ``dataset_options.normalization``:
  a ``data.Options`` field).
- Every ``python train.py``, ``python -m resnet_jax...``, ``python benchmarks/...`` and
  ``python scripts/...`` command in a shell code block or an inline code span of the docs or
  the README, or in the docstring of a config file or of a module, parses its flags:
  train.py's with its own ``parse_args`` and then ``load_config`` (config file, ``:arg`` and
  overrides), the others by running the module with ``ArgumentParser.parse_args`` stopped
  right after parsing, so nothing runs.
  Placeholders are filled in first: ``<dir>`` and ``$VAR`` become a value, ``[--flag v]`` (an
  optional part) becomes ``--flag v``; a command with a literal ``...`` is elided and skipped,
  and a bare ``python -m module`` (a name, not a call) only has to exist.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import ml_collections
import pytest

from resnet_jax.training import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
SOURCES = [ROOT / "train.py", *sorted((ROOT / "resnet_jax").rglob("*.py"))]
SCRIPTS = [*sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "scripts").glob("*.py"))]
SCRIPT_DIRS = ("benchmarks/", "scripts/")

_CONFIG_KEY = re.compile(r"--config\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_SPAN = re.compile(r"`([^`]+)`")
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_SEPARATORS = {";", "&", "&&", "||", "|", "do", "then", "done", "wait"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def config_keys_named() -> dict[str, set[str]]:
    """``--config.KEY`` -> where it is named."""
    found: dict[str, set[str]] = {}
    for path in [*DOCS, *CONFIGS, *SOURCES, *SCRIPTS, *(ROOT / "benchmarks").glob("*.sh")]:
        for key in _CONFIG_KEY.findall(path.read_text()):
            found.setdefault(key, set()).add(_rel(path))
    return found


@functools.cache
def _forwarded_options() -> dict[str, set[str]]:
    """What each free-form key is forwarded to accepts: ``create_model``'s options (the fields
    of ``ResNet``) and ``create_dataset``'s (the fields of ``data.Options``, read from its
    source: importing it would import TensorFlow)."""
    from resnet_jax.models import ResNet

    tree = ast.parse((ROOT / "resnet_jax/data/options.py").read_text())
    options = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Options")
    fields = {n.target.id for n in options.body if isinstance(n, ast.AnnAssign)}
    return {"model_kwargs": {f.name for f in dataclasses.fields(ResNet)},
            "dataset_options": fields}


def config_key_exists(key: str, config: ml_collections.ConfigDict) -> bool:
    parts = key.split(".")
    if parts[0] in config_lib.FREE_FORM_KEYS:
        # Any sub-key is accepted by the config; the API it is forwarded to must know it.
        return len(parts) == 1 or parts[1] in _forwarded_options()[parts[0]]
    node = config
    for part in parts:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _shell_texts() -> list[tuple[str, str]]:
    """(where, text) of every shell block, inline code span and config docstring."""
    texts = []
    for path in DOCS:
        doc = path.read_text()
        for lang, body in _FENCE.findall(doc):
            if lang in ("", "bash", "sh", "shell", "console"):
                texts.append((_rel(path), body))
        prose = _FENCE.sub("", doc)
        texts += [(_rel(path), span.replace("\n", " ")) for span in _SPAN.findall(prose)]
    for path in [*CONFIGS, *SOURCES, *SCRIPTS]:  # their module docstrings
        texts.append((_rel(path), ast.get_docstring(ast.parse(path.read_text())) or ""))
    return texts


def _optional(m: re.Match) -> str:
    # "[--compare torch|flax_example]" -> "--compare torch"; "[--image_size N]" -> "--image_size 1"
    words = [w.split("|")[0] for w in m.group(1).split()]
    return " ".join("1" if re.fullmatch(r"[A-Z][A-Z_]*", w) else w for w in words)


def _fill_placeholders(line: str) -> str:
    """Values a reader fills in become "1" (valid as an int, a float and a path)."""
    line = re.sub(r"<[^<>\n]+>", "1", line)
    line = re.sub(r"\$\{?\w+\}?", "1", line)
    return re.sub(r"\[(--[^\[\]]*)\]", _optional, line)


def _words(line: str) -> list[str] | None:
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        return list(lexer)
    except ValueError:  # unbalanced quotes: not a shell line
        return None


def commands_named() -> list[tuple[str, list[str]]]:
    """(where, argv after ``python``) of every command the docs show."""
    found = []
    for where, text in _shell_texts():
        for line in re.sub(r"\\\n", " ", text).splitlines():
            line = line.strip().removeprefix("$ ")
            words = _words(_fill_placeholders(line))
            if not words:
                continue
            start = True
            command: list[str] | None = None
            for word in [*words, ";"]:
                if word in _SEPARATORS or word.startswith(("#",)):
                    if command is not None:
                        found.append((where, command))
                    command, start = None, True
                    if word.startswith("#"):
                        break
                elif command is not None:
                    command.append(word)
                elif start and _ASSIGNMENT.match(word):
                    continue  # VAR=value python ...
                elif start and word in ("python", "python3"):
                    command = []
                else:
                    start = False
    ours = [(w, a) for w, a in found if a and "..." not in a]  # "..." elides the rest: skipped
    return [
        (where, argv) for where, argv in ours
        if argv[0] == "train.py" or argv[0].startswith(SCRIPT_DIRS)
        or (argv[0] == "-m" and argv[1].startswith("resnet_jax"))
    ]


class _Parsed(Exception):
    """Raised by the patched ``ArgumentParser.parse_args``: parsing succeeded."""


@contextlib.contextmanager
def _stop_after_parsing():
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _load_train_py():
    spec = importlib.util.spec_from_file_location("_train_py", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_problem(argv: list[str], train_py) -> str | None:
    """None if the command's flags parse, else what went wrong (argparse's own message)."""
    err = io.StringIO()
    old_argv, old_path, old_env = sys.argv, list(sys.path), dict(os.environ)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if argv[0] == "train.py":
                args, overrides = train_py.parse_args(argv[1:])
                config_lib.load_config(str(ROOT / args.config), overrides)
                return None
            with _stop_after_parsing():
                if argv[0] == "-m":
                    if len(argv) == 2:  # a module named, not called
                        return None if importlib.util.find_spec(argv[1]) else "no such module"
                    sys.argv = [argv[1], *argv[2:]]
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    script = ROOT / argv[0]
                    if not script.is_file():
                        return "no such file"
                    if "argparse" not in script.read_text():
                        return "no argparse parser to check the flags with"
                    if len(argv) == 1:
                        return None
                    sys.argv = [str(script), *argv[1:]]
                    sys.path.insert(0, str(script.parent))
                    runpy.run_path(str(script), run_name="__main__")
        return "ran without parsing its flags"
    except _Parsed:
        return None
    except SystemExit as e:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e}"
    except config_lib.ConfigError as e:
        return f"error: {e}"
    except ImportError as e:
        return str(e)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        os.environ.clear()
        os.environ.update(old_env)


# Not keys: the generic forms in usage lines, and docs/training.md's example of a typo.
NOT_KEYS = {"key", "a.b", "learning_rte"}


def test_every_config_key_named_exists():
    defaults = config_lib.default_config()
    named = config_keys_named()
    assert len(named) > 20  # the scan finds the keys the docs name
    missing = {
        k: sorted(v) for k, v in sorted(named.items())
        if k not in NOT_KEYS and not config_key_exists(k, defaults)
    }
    assert missing == {}, "these --config keys are not in default_config()"


def test_every_command_named_parses_its_flags():
    commands = commands_named()
    kinds = {argv[0] if argv[0] != "-m" else argv[1].split(".")[1] for _, argv in commands}
    assert {"train.py", "training", "export", "experiments", "scripts/models_table.py"} <= kinds
    assert any(argv[0].startswith("benchmarks/") for _, argv in commands)
    train_py = _load_train_py()
    problems = {}
    for where, argv in commands:
        problem = parse_problem(argv, train_py)
        if problem:
            problems[f"{where}: python {shlex.join(argv)}"] = problem
    assert problems == {}


@pytest.mark.parametrize(
    "argv,problem",
    [
        (["train.py", "--config", "configs/quickstart.py", "--workdir", "w", "--config.lr=1"],
         "unknown config key 'lr'"),
        (["train.py", "--config", "configs/quickstart.py"], "required: --workdir"),
        (["-m", "resnet_jax.training.evaluate", "--wrokdir", "runs/a"], "unrecognized arguments"),
        (["benchmarks/train_step.py", "--modles", "resnet20"], "unrecognized arguments"),
        (["-m", "resnet_jax.training.nothing", "--x"], "No module named"),
    ],
)
def test_a_stale_command_is_caught(argv, problem):
    got = parse_problem(argv, _load_train_py())
    assert got is not None and problem in got


def test_a_stale_config_key_is_caught():
    defaults = config_lib.default_config()
    assert config_key_exists("dataset_options.normalization", defaults)
    assert config_key_exists("model_kwargs.drop_path_rate", defaults)
    for stale in ("learning_rte", "dataset_options.normalisation", "model_kwargs.drop_rate",
                  "global_batch_size.x"):
        assert not config_key_exists(stale, defaults), stale


def test_the_number_of_registered_networks_is_current():
    import resnet_jax

    readme = (ROOT / "README.md").read_text()
    counts = re.findall(r"(\d+) registered networks|every registered name \((\d+)\)", readme)
    assert len(counts) == 2
    assert {int(a or b) for a, b in counts} == {len(resnet_jax.list_models())}
