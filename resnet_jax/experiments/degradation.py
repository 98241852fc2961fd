"""Degradation (He et al. 2015, Fig. 1 and Fig. 6): plain vs residual nets of two depths.

The claim: with the same recipe, the deeper *plain* net has a higher *training* error than the
shallower one (an optimisation difficulty, not overfitting), while the deeper ResNet does not.

    python -m resnet_jax.experiments.degradation --quick   # 2 CPU cores, < 30 min
    python -m resnet_jax.experiments.degradation           # the paper's 64k iterations (GPU)

Writes ``degradation.png`` (training error thin, test error bold, vs iteration, as Fig. 6),
``results.md`` / ``results.json`` and one training run per net under ``<out>/runs``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from resnet_jax.experiments import common
from resnet_jax.training import recipes

# --quick: 2 CPU cores, at most 30 minutes for all four nets (docs/experiments.md says why).
QUICK_STEPS = 200
PAPER_STEPS = 64_000
FAMILIES = ("plain", "resnet")
# He et al. 2015 Table 6 (test error %, CIFAR-10); plain nets only in Fig. 6, read off the plot.
PAPER_TEST_ERROR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
                    "resnet110": 6.43}


def run(argv: Sequence[str] | None = None) -> dict:
    args = common.parse_args("degradation", __doc__.split("\n\n")[0], argv)
    steps = args.steps or (QUICK_STEPS if args.quick else PAPER_STEPS)
    batch = args.batch or 128
    depths = args.depths or [20, 56]
    if len(depths) < 2:
        raise common.ExperimentError("--depths needs at least two depths to compare")
    data_root = common.cifar10_root(args, common.test_images_for(args))
    report = common.Report("degradation", args)
    evals = 5 if args.quick else 32

    runs: dict[str, dict] = {}
    for family in FAMILIES:
        for depth in depths:
            model, kwargs = common.cifar_model(family, depth)
            config = common.cifar_config(model, data_root, steps=steps, batch=batch, evals=evals,
                                         model_kwargs=kwargs)
            t0 = time.time()
            print(f"== {common.label(family, depth)}: {steps} steps of batch {batch}", flush=True)
            result = common.train(config, str(Path(args.out) / "runs" / f"{family}{depth}"))
            runs[f"{family}{depth}"] = {
                "family": family, "depth": depth, "label": common.label(family, depth),
                "train": result["train"], "eval": result["eval"],
                "final_train_error": common.final_train_error(result["train"]),
                "test_error": 1.0 - result["eval_top1"],
                "seconds": time.time() - t0,
            }
    report.data.update(steps=steps, batch=batch, depths=depths, runs=runs,
                       test_images=common.count_test_images(data_root))

    plot(runs, depths, Path(args.out) / "degradation.png")
    rows = []
    for key, r in runs.items():
        paper = PAPER_TEST_ERROR.get(key, "")
        rows.append([r["label"], 100 * r["final_train_error"], 100 * r["test_error"],
                     paper, f"{r['seconds'] / 60:.1f}"])
    report.add(
        f"{steps} iterations of batch {batch} ({steps * batch / recipes.CIFAR_TRAIN_IMAGES:.2f} "
        f"epochs), lr 0.1 divided by 10 at {steps // 2} and {3 * steps // 4}; test error on "
        f"{report.data['test_images']:,} CIFAR-10 test images. Training error: mean mini-batch "
        "error (augmented) over the last 10% of logged steps.\n"
    )
    report.add(report.table(
        ["net", "train error %", "test error %", "paper test error % (Table 6)", "minutes"], rows
    ))
    claims = check_claims(runs, depths)
    report.claims(claims)
    report.add("![degradation](degradation.png)")
    report.write(common.command_line("degradation", argv))
    return report.data


def check_claims(runs: dict[str, dict], depths: Sequence[int]) -> list[dict]:
    """The 2015 paper's two statements about training error, checked on this run."""
    lo, hi = min(depths), max(depths)
    out = []
    for family, want_higher in (("plain", True), ("resnet", False)):
        shallow = runs[f"{family}{lo}"]["final_train_error"]
        deep = runs[f"{family}{hi}"]["final_train_error"]
        holds = deep > shallow if want_higher else deep <= shallow
        relation = "higher" if want_higher else "not higher"
        out.append({
            "claim": f"{common.label(family, hi)} has {relation} training error than "
                     f"{common.label(family, lo)}",
            "holds": bool(holds),
            "detail": f"{100 * deep:.2f}% vs {100 * shallow:.2f}%",
        })
    return out


def plot(runs: dict[str, dict], depths: Sequence[int], path: Path) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.cm.viridis_r([0.25 + 0.6 * i / max(len(depths) - 1, 1)
                               for i in range(len(depths))])
    for ax, family in zip(axes, FAMILIES, strict=True):
        for depth, color in zip(depths, colors, strict=True):
            r = runs[f"{family}{depth}"]
            if r["train"]:
                s, e = zip(*r["train"], strict=True)
                ax.plot(s, [100 * v for v in e], color=color, lw=0.8, alpha=0.8)
            if r["eval"]:
                s, e = zip(*r["eval"], strict=True)
                ax.plot(s, [100 * v for v in e], color=color, lw=2.5, marker="o", ms=3,
                        label=r["label"])
        ax.set_title(f"{'plain' if family == 'plain' else 'ResNet'} (thin: train, bold: test)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("error (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
