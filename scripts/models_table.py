"""Prints (or writes into README.md) the table of every registered model, computed from the code.

    python scripts/models_table.py            # print the markdown table
    python scripts/models_table.py --write    # replace the table between the README's markers

Parameters count BN scales and shifts, not running statistics. MACs are multiply-accumulates of
one forward pass at 224 px (ImageNet models) or 32 px (CIFAR models), from ``count_macs``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import resnet_jax

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- models-table:start -->", "<!-- models-table:end -->"

# Published numbers: (params, MACs, source). None where the source gives none. The papers give
# no MACs for the CIFAR nets; those shown are the counts commonly cited for them.
REFERENCE: dict[str, tuple[str | None, str | None, str]] = {
    "resnet18": ("11,689,512", "1.814G", "torchvision"),
    "resnet34": ("21,797,672", "3.664G", "torchvision"),
    "resnet50": ("25,557,032", "4.089G", "torchvision"),
    "resnet101": ("44,549,160", "7.801G", "torchvision"),
    "resnet152": ("60,192,808", "11.514G", "torchvision"),
    "resnet50_v1": (None, "3.8G", "2015 Table 1"),
    "resnet101_v1": (None, "7.6G", "2015 Table 1"),
    "resnet152_v1": (None, "11.3G", "2015 Table 1"),
    "resnext50_32x4d": ("25,028,904", "4.23G", "torchvision"),
    "resnext101_32x8d": ("88,791,336", "16.41G", "torchvision"),
    "wide_resnet50_2": ("68,883,240", "11.4G", "torchvision"),
    "wide_resnet101_2": ("126,886,696", "22.75G", "torchvision"),
    "resnet50d": ("25,576,264", None, "timm"),
    "seresnet50": ("28.09M", None, "timm; +2.5M: Hu et al. §3.3"),
    "seresnext50_32x4d": ("27.56M", "4.25G", "timm; Hu et al. Table 2 (MACs)"),
    "seresnext50d_32x4d": (None, None, "fastai's xse_resnext50 (with `activation=\"mish\"`)"),
    "resnet20": ("0.27M", "40.6M", "2015 Table 6 (params)"),
    "resnet32": ("0.46M", None, "2015 Table 6"),
    "resnet44": ("0.66M", None, "2015 Table 6"),
    "resnet56": ("0.85M", "125.5M", "2015 Table 6 (params)"),
    "resnet110": ("1.7M", "252.9M", "2015 Table 6 (params)"),
    "resnet1202": ("19.4M", None, "2015 Table 6"),
    "preact_resnet110": ("1.7M", None, "2016 Table 3"),
    "preact_resnet164": ("1.7M", None, "2016 Table 3"),
    "preact_resnet1001": ("10.2M (weights only)", None, "2016 Table 3"),
    "wrn28_10": ("36.5M", None, "Zagoruyko & Komodakis Table 1"),
    "resnext29_8x64d": ("34.4M", None, "Xie et al. Table 7"),
}


def _fmt_macs(macs: int) -> str:
    return f"{macs / 1e9:.3f}G" if macs >= 1e9 else f"{macs / 1e6:.1f}M"


def row(name: str) -> str:
    """One markdown row for model ``name``."""
    model = resnet_jax.create_model(name)
    size = 32 if model.stem == "cifar" else 224
    shape = (1, size, size, model.in_channels)
    params = resnet_jax.count_params(resnet_jax.abstract_variables(model, shape)["params"])
    macs = resnet_jax.count_macs(model, shape)
    ref_params, ref_macs, source = REFERENCE.get(name, (None, None, ""))
    return (f"| `{name}` | {size} | {params:,} | {ref_params or '-'} | {_fmt_macs(macs)} | "
            f"{ref_macs or '-'} | {source} |")


def table() -> str:
    header = ("| model | input | params | published params | MACs | published MACs | source |\n"
              "|---|---|---|---|---|---|---|")
    return "\n".join([header] + [row(name) for name in resnet_jax.list_models()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    text = table()
    if not args.write:
        print(text)
        return 0
    readme = README.read_text()
    if START not in readme or END not in readme:
        sys.exit(f"{README} has no {START} ... {END} markers")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    README.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", readme))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
