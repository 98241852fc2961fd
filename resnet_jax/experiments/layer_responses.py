"""Layer responses (He et al. 2015, Fig. 7): the standard deviation of every 3x3 layer's output
(after BN, before the ReLU or the addition) for trained plain and residual nets of equal depth.

The claim (§4.2): residual functions are generally closer to zero than non-residual ones, so
ResNets' responses are smaller than their plain counterparts', and deeper ResNets have smaller
responses still.

    python -m resnet_jax.experiments.layer_responses --quick  # trains 4 small-budget nets
    python -m resnet_jax.experiments.layer_responses --runs runs/experiments/degradation/runs
    python -m resnet_jax.experiments.layer_responses           # 20/56/110, 64k iterations

Writes ``layer_responses.png`` (top: in layer order; bottom: sorted, as Fig. 7), ``results.md``
and ``results.json``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from resnet_jax.experiments import common

FAMILIES = ("plain", "resnet")
EVAL_IMAGES = 500


def run(argv: Sequence[str] | None = None) -> dict:
    args = common.parse_args("layer_responses", __doc__.split("\n\n")[0], argv,
                             common.add_runs_flag)
    steps = args.steps or (common.QUICK_ANALYSIS_STEPS if args.quick else 64_000)
    batch = args.batch or (common.QUICK_ANALYSIS_BATCH if args.quick else 128)
    depths = args.depths or ([20, 56] if args.quick else [20, 56, 110])
    report = common.Report("layer_responses", args)

    nets: dict[str, dict] = {}
    for family in FAMILIES:
        for depth in depths:
            key = f"{family}{depth}"
            workdir = common.trained_net(args, key, family, depth, steps=steps, batch=batch)
            model, variables, config = common.load_trained(workdir)
            images, _ = common.eval_batch(config, EVAL_IMAGES)
            stds = layer_stds(model, variables, images)
            nets[key] = {"family": family, "depth": depth, "label": common.label(family, depth),
                         "workdir": workdir, "std": stds}
    report.data.update(steps=steps if not args.runs else "from --runs", batch=batch,
                       depths=depths, eval_images=EVAL_IMAGES, nets=nets)

    plot(nets, depths, Path(args.out) / "layer_responses.png")
    rows = [[n["label"], len(n["std"]), float(np.mean(n["std"])), float(np.median(n["std"])),
             float(np.max(n["std"]))] for n in nets.values()]
    trained = (f"trained for {steps} iterations of batch {batch}" if not args.runs
               else f"taken from {args.runs}")
    report.add(
        f"Nets {trained}. Std of each 3x3 layer's output (after BN, before ReLU/addition; the "
        f"stem's 3x3 conv included) over all elements, on {EVAL_IMAGES} CIFAR-10 test images, "
        "in evaluation mode (BN with running statistics), as Fig. 7.\n"
    )
    report.add(report.table(["net", "3x3 layers", "mean std", "median std", "max std"], rows))
    claims = []
    for depth in depths:
        p, r = nets[f"plain{depth}"]["std"], nets[f"resnet{depth}"]["std"]
        claims.append({
            "claim": f"ResNet-{depth}'s responses are smaller than plain-{depth}'s (mean std)",
            "holds": bool(np.mean(r) < np.mean(p)),
            "detail": f"{np.mean(r):.3f} vs {np.mean(p):.3f}",
        })
    means = [float(np.mean(nets[f"resnet{d}"]["std"])) for d in depths]
    claims.append({
        "claim": "deeper ResNets have smaller responses (mean std falls with depth)",
        "holds": bool(all(a > b for a, b in zip(means, means[1:], strict=False))),
        "detail": ", ".join(f"ResNet-{d}: {m:.3f}" for d, m in zip(depths, means, strict=True)),
    })
    report.claims(claims)
    report.add("![layer responses](layer_responses.png)")
    report.write(common.command_line("layer_responses", argv))
    return report.data


def _layer_order(path: str) -> tuple:
    """Sort key: the stem first, then stage, unit and position in the unit (network order)."""
    nums = [int(n) for n in re.findall(r"\d+", path)]
    return (0,) if path == "response" else (1, *nums)


def layer_stds(model, variables: dict, images: np.ndarray) -> list[float]:
    """Std of every sown 3x3 response, in network order."""
    _, state = jax.jit(
        lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"])
    )(variables, images)
    found: dict[str, jax.Array] = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path[:-1])  # drop the tuple index
        if name.rsplit("/", 1)[-1].startswith("response"):
            found[name] = value
    ordered = sorted(found, key=_layer_order)
    return [float(np.std(np.asarray(found[k], np.float64))) for k in ordered]


def plot(nets: dict[str, dict], depths: Sequence[int], path: Path) -> None:
    plt = common.pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    colors = plt.cm.viridis_r(np.linspace(0.25, 0.85, len(depths)))
    for depth, color in zip(depths, colors, strict=True):
        for family, style in (("plain", "--"), ("resnet", "-")):
            n = nets[f"{family}{depth}"]
            idx = np.arange(1, len(n["std"]) + 1)
            top.plot(idx, n["std"], style, color=color, label=n["label"])
            bottom.plot(idx, sorted(n["std"], reverse=True), style, color=color, label=n["label"])
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
