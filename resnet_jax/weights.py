"""Named pretrained weights (torchvision's, timm's, Hugging Face's ImageNet-1k ResNets).

    p = resnet_jax.pretrained("resnet50", "torchvision")      # IMAGENET1K_V2, fetched once
    logits = p.model.apply(p.variables, p.spec.normalize(images_uint8), train=False)
    p.spec.class_names[int(logits[0].argmax())]                # an ImageNet-1k class name

A name is ``SOURCE:MODEL[.TAG]`` (``torchvision:resnet50.IMAGENET1K_V1``,
``timm:resnet50.a1_in1k``; the Hub's repository id, ``hf:microsoft/resnet-50``); without a tag,
the source's default (torchvision's ``DEFAULT``, timm's first tag). The same names work as
``--config.init_from`` and ``--weights`` of evaluate and predict. Files are downloaded,
verified and cached by :mod:`resnet_jax.hub`. ``top1`` is what the source publishes for
ImageNet-1k validation with its own preprocessing (``spec`` mirrors it: resize, centre crop,
mean/std), not a figure measured here.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.resources
import re
from pathlib import Path
from typing import Any

from resnet_jax import hub
from resnet_jax.inference import InferenceSpec

SOURCES = ("torchvision", "timm", "hf")


class WeightsError(ValueError):
    """Unknown weights name, or weights that cannot be fetched or verified."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published weight file and what its source says about it."""

    source: str  # "torchvision" | "timm" | "hf"
    model: str  # our registered model name
    tag: str  # the source's name: "IMAGENET1K_V2", "a1_in1k", "microsoft/resnet-50"
    url: str
    sha256: str  # full hash or the published prefix; "" = the source publishes none (unverified)
    top1: float | None  # ImageNet-1k top-1 (%) the source publishes; None: it publishes none
    top1_cited: str  # where that figure (or the preprocessing) comes from
    default: bool = False  # the source's default for this model
    image_size: int = 224  # the source's evaluation preprocessing
    crop_fraction: float = 224 / 256
    resize_method: str = "bilinear"

    @property
    def name(self) -> str:
        if self.source == "hf":  # the Hub's repository id names the weights
            return f"hf:{self.tag}"
        return f"{self.source}:{self.model}.{self.tag}"

    @property
    def file_name(self) -> str:
        """The cached file's name: torchvision's own (with its hash prefix), else source-name."""
        base = Path(self.url).name
        if self.source == "torchvision":
            return base
        if self.source == "hf":
            return f"hf-{self.tag.replace('/', '--')}-{base}"
        return f"{self.source}-{self.model}.{self.tag}-{base}"

    @property
    def normalization(self) -> dict[str, Any]:
        from resnet_jax.data.normalization import IMAGENET_MEAN_STD

        mean, std = IMAGENET_MEAN_STD  # both sources' ImageNet weights expect these
        return {"kind": "mean_std", "mean": list(mean), "std": list(std)}

    def spec(self) -> InferenceSpec:
        """What inference needs besides the weights: classes, input size, preprocessing."""
        return InferenceSpec(
            model=self.model, model_kwargs={}, class_names=imagenet_class_names(),
            image_size=self.image_size, resize_method=self.resize_method,
            crop_fraction=self.crop_fraction, eval_view="center",
            normalization=self.normalization,
        )


_REGISTRY: dict[str, Weights] = {}
_TV_DOCS = "torchvision docs (ResNet*_Weights meta, acc@1)"


def _register(weights: Weights) -> None:
    if weights.name in _REGISTRY:
        raise ValueError(f"weights {weights.name!r} are already registered")
    _REGISTRY[weights.name] = weights


def _torchvision(model: str, tag: str, file: str, top1: float, resize: int = 256,
                 default: bool = False) -> None:
    # torchvision's file names end in the first 8 hex digits of their SHA-256 (it checks those).
    sha256 = re.fullmatch(r".+-([0-9a-f]{8,})\.pth", file).group(1)
    _register(Weights("torchvision", model, tag, f"https://download.pytorch.org/models/{file}",
                      sha256, top1, _TV_DOCS, default, crop_fraction=224 / resize))


def _timm(model: str, tag: str, top1: float, cited: str, crop: float, default: bool = False,
          method: str = "bicubic") -> None:
    url = f"https://huggingface.co/timm/{model}.{tag}/resolve/main/model.safetensors"
    _register(Weights("timm", model, tag, url, "", top1, cited, default, crop_fraction=crop,
                      resize_method=method))


# torchvision (resize 256 / V2: 232, centre crop 224, bilinear); DEFAULT = torchvision's.
_torchvision("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 69.758, default=True)
_torchvision("resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth", 73.314, default=True)
_torchvision("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.130)
_torchvision("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 80.858, 232, default=True)
_torchvision("resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth", 77.374)
_torchvision("resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 81.886, 232, default=True)
_torchvision("resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth", 78.312)
_torchvision("resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 82.284, 232, default=True)
_torchvision("resnext50_32x4d", "IMAGENET1K_V1", "resnext50_32x4d-7cdf4587.pth", 77.618)
_torchvision("resnext50_32x4d", "IMAGENET1K_V2", "resnext50_32x4d-1a0047aa.pth", 81.198, 232,
             default=True)
_torchvision("resnext101_32x8d", "IMAGENET1K_V1", "resnext101_32x8d-8ba56ff5.pth", 79.312)
_torchvision("resnext101_32x8d", "IMAGENET1K_V2", "resnext101_32x8d-110c445d.pth", 82.834, 232,
             default=True)
_torchvision("wide_resnet50_2", "IMAGENET1K_V1", "wide_resnet50_2-95faca4d.pth", 78.468)
_torchvision("wide_resnet50_2", "IMAGENET1K_V2", "wide_resnet50_2-9ba9bcbe.pth", 81.602, 232,
             default=True)
_torchvision("wide_resnet101_2", "IMAGENET1K_V1", "wide_resnet101_2-32ee1156.pth", 78.848)
_torchvision("wide_resnet101_2", "IMAGENET1K_V2", "wide_resnet101_2-d733dc28.pth", 82.510, 232,
             default=True)
# timm on the Hugging Face Hub (safetensors; torchvision's key names). We pin no hash for Hub
# files (none we could confirm offline): they are unverified (length and format checked only).
_timm("resnet50", "a1_in1k", 80.4, "Wightman et al. 2021, ResNet strikes back "
      "(arXiv:2110.00476), procedure A1 at 224 px", crop=0.95, default=True)
# transformers' ResNetForImageClassification (names mapped: state_dicts.from_hugging_face);
# the model card publishes no top-1. Preprocessing from its preprocessor_config.json.
_register(Weights("hf", "resnet50", "microsoft/resnet-50",
                  "https://huggingface.co/microsoft/resnet-50/resolve/main/model.safetensors", "",
                  None, "no top-1 published; crop_pct 0.875, bicubic (preprocessor_config.json)",
                  True, crop_fraction=0.875, resize_method="bicubic"))


def list_weights(pattern: str = "*") -> list[str]:
    """Registered weight names matching a shell-style ``pattern`` (``"timm:*"``)."""
    import fnmatch

    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def is_weights_name(text: str) -> bool:
    """True for ``SOURCE:...`` with a known source (not a path or URL)."""
    return text.split(":", 1)[0] in SOURCES and ":" in text


def find(name: str) -> Weights:
    """The registered weights ``SOURCE:MODEL[.TAG]`` names (the source's default without a tag)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    source = name.split(":", 1)[0]
    defaults = [w for w in _REGISTRY.values() if w.default and f"{w.source}:{w.model}" == name]
    if defaults:
        return defaults[0]
    known = list(_REGISTRY) + sorted({f"{w.source}:{w.model}" for w in _REGISTRY.values()})
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    where = (f"sources are {', '.join(SOURCES)}" if source not in SOURCES
             else f"{len(list_weights(source + ':*'))} {source} weights are registered")
    raise WeightsError(
        f"unknown pretrained weights {name!r} ({where}).{hint} resnet_jax.list_weights() "
        "lists them; a local file works too (init_from=PATH.pth / .safetensors)"
    )


def download(weights: Weights | str, *, progress: bool | None = None) -> Path:
    """The verified local file of ``weights`` (fetched into the cache the first time)."""
    weights = find(weights) if isinstance(weights, str) else weights
    try:
        return hub.fetch(weights.url, weights.file_name, weights.sha256, progress=progress)
    except hub.DownloadError as e:
        raise WeightsError(f"{weights.name}: {e}") from None


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k's 1000 class names in label order (torchvision's list, as its weights use)."""
    text = importlib.resources.files("resnet_jax").joinpath("imagenet_classes.txt").read_text()
    return tuple(line for line in text.splitlines() if line)


@dataclasses.dataclass
class Pretrained:
    """A network with its pretrained weights: ``model.apply(variables, spec.normalize(x))``."""

    model: Any  # the Flax module
    variables: dict[str, Any]  # {"params", "batch_stats"}
    spec: InferenceSpec  # class names, input size, preprocessing, normalisation
    weights: Weights  # the registry entry (URL, hash, published top-1)


def pretrained(model: str, source: str = "torchvision", **options: Any) -> Pretrained:
    """``model`` (``"resnet50"`` or ``"resnet50.IMAGENET1K_V1"``) with ``source``'s ImageNet-1k
    weights (``"torchvision"`` or ``"timm"``); a whole name (``"timm:resnet50.a1_in1k"``) as
    ``model`` works too. ``options`` go to ``create_model`` (e.g. ``dtype``, ``scan_units``)."""
    from resnet_jax.errors import PretrainedError
    from resnet_jax.models.registry import create_model
    from resnet_jax.models.state_dicts import read_state_dict
    from resnet_jax.models.torchvision import from_torchvision

    weights = find(model if ":" in model else f"{source}:{model}")
    path = download(weights)
    try:
        state_dict = read_state_dict(str(path))
    except PretrainedError as e:
        raise WeightsError(f"{weights.name}: {e}") from None
    variables = from_torchvision(weights.model, state_dict, **options)
    options.pop("scan_units", None)
    net = create_model(weights.model, num_classes=len(imagenet_class_names()), **options)
    return Pretrained(model=net, variables=variables, spec=weights.spec(), weights=weights)
