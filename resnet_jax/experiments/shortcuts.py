"""Shortcut options A/B/C (He et al. 2015 §3.3, Table 3) and the activation placements of
Identity Mappings (He et al. 2016, Fig. 4 and Table 2) on one budget, next to the papers'
numbers.

A: zero-padding shortcuts for increased dimensions (parameter-free); B: projections only where
dimensions increase; C: projections everywhere. Activations (all with option A): (a) original
post-activation, (b) BN after addition, (c) ReLU before addition, (d) ReLU-only pre-activation,
(e) full pre-activation.

    python -m resnet_jax.experiments.shortcuts --quick  # ResNet-20, a short budget, 2 CPU cores
    python -m resnet_jax.experiments.shortcuts          # ResNet-110, 64k iterations (GPU)

Writes ``shortcuts.png`` (test error per variant), ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from resnet_jax.experiments import common

QUICK_STEPS = 100
# (key, description, model options, paper value, paper source)
VARIANTS = (
    ("A", "shortcut A (zero-padding); = (a) original", {"shortcut": "A"},
     25.03, "2015 Table 3: ImageNet ResNet-34 top-1, 10-crop"),
    ("B", "shortcut B (projection when increasing dims)", {"shortcut": "B"},
     24.52, "2015 Table 3"),
    ("C", "shortcut C (all projections)", {"shortcut": "C"},
     24.19, "2015 Table 3"),
    ("b", "(b) BN after addition", {"order": "bn_after_add"},
     8.17, "2016 Table 2: CIFAR-10 ResNet-110 test error"),
    ("c", "(c) ReLU before addition", {"order": "relu_before_add"},
     7.84, "2016 Table 2"),
    ("d", "(d) ReLU-only pre-activation", {"order": "relu_preact"},
     6.71, "2016 Table 2"),
    ("e", "(e) full pre-activation", {"order": "full_preact"},
     6.37, "2016 Table 2"),
)
PAPER_ORIGINAL_110 = 6.61  # 2016 Table 2, (a) original unit on ResNet-110


def _extra(parser) -> None:
    parser.add_argument("--variants", default="",
                        help="comma-separated subset of " + ",".join(v[0] for v in VARIANTS))


def run(argv: Sequence[str] | None = None) -> dict:
    args = common.parse_args("shortcuts", __doc__.split("\n\n")[0], argv, _extra)
    steps = args.steps or (QUICK_STEPS if args.quick else 64_000)
    batch = args.batch or 128
    depths = args.depths or ([20] if args.quick else [110])
    if len(depths) != 1:
        raise common.ExperimentError("--depths takes one depth here (every variant uses it)")
    depth = depths[0]
    chosen = args.variants.split(",") if args.variants else [v[0] for v in VARIANTS]
    unknown = sorted(set(chosen) - {v[0] for v in VARIANTS})
    if unknown:
        raise common.ExperimentError(
            f"unknown variant(s) {unknown}; choose from {','.join(v[0] for v in VARIANTS)}")
    data_root = common.cifar10_root(args, common.test_images_for(args))
    report = common.Report("shortcuts", args)

    results: dict[str, dict] = {}
    for key, description, options, paper, source in VARIANTS:
        if key not in chosen:
            continue
        model, kwargs = common.cifar_model("resnet", depth)
        config = common.cifar_config(model, data_root, steps=steps, batch=batch, evals=4,
                                     model_kwargs={**kwargs, **options},
                                     warmup_400=depth >= 110 and steps > 4_000)
        print(f"== ResNet-{depth} {description}: {steps} steps of batch {batch}", flush=True)
        t0 = time.time()
        r = common.train(config, str(Path(args.out) / "runs" / key))
        results[key] = {
            "description": description, "options": options,
            "test_error": 1.0 - r["eval_top1"],
            "final_train_error": common.final_train_error(r["train"]),
            "eval": r["eval"], "train": r["train"], "paper": paper, "paper_source": source,
            "seconds": time.time() - t0,
        }
    report.data.update(steps=steps, batch=batch, depth=depth, results=results,
                       test_images=common.count_test_images(data_root))

    plot(results, depth, Path(args.out) / "shortcuts.png")
    report.add(
        f"ResNet-{depth} on CIFAR-10, {steps} iterations of batch {batch}, lr 0.1 divided by 10 "
        f"at {steps // 2} and {3 * steps // 4}; test error on {report.data['test_images']:,} "
        "test images. The papers' numbers are for other budgets (and, for A/B/C, another "
        f"dataset); compare orderings, not values. Paper (a) original on ResNet-110: "
        f"{PAPER_ORIGINAL_110}%.\n"
    )
    rows = [[k, r["description"], 100 * r["final_train_error"], 100 * r["test_error"],
             r["paper"], r["paper_source"], f"{r['seconds'] / 60:.1f}"]
            for k, r in results.items()]
    report.add(report.table(["key", "variant", "train error %", "test error %",
                             "paper error %", "paper source", "minutes"], rows))
    report.add("![shortcuts](shortcuts.png)")
    report.write(common.command_line("shortcuts", argv))
    return report.data


def plot(results: dict[str, dict], depth: int, path: Path) -> None:
    plt = common.pyplot()
    keys = list(results)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    test = [100 * results[k]["test_error"] for k in keys]
    train = [100 * results[k]["final_train_error"] for k in keys]
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], train, 0.4, label="train error (last 10%)", color="tab:gray")
    ax.bar([i + 0.2 for i in x], test, 0.4, label="test error", color="tab:blue")
    ax.set_xticks(list(x), [results[k]["description"].split(";")[0] for k in keys],
                  rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("error (%)")
    ax.set_title(f"ResNet-{depth} variants on CIFAR-10")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
