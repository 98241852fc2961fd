"""PNG plots of a run's metrics: loss, and train/eval top-1 error, against the step.

    python -m resnet_jax.training.plot runs/quickstart      # -> runs/quickstart/plots/*.png

Several workdirs plot on the same axes (e.g. plain20 vs resnet20, 2015 paper Fig. 6).
"""

from __future__ import annotations

import argparse
import os
import sys

from resnet_jax.training.metrics import read_jsonl


def plot_runs(workdirs: list[str], out_dir: str) -> list[str]:
    """Writes loss.png and error.png to ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    runs = {os.path.basename(os.path.normpath(w)): read_jsonl(os.path.join(w, "metrics.jsonl"))
            for w in workdirs}
    paths = []
    for name, keys, ylabel in (
        ("loss", ("loss",), "cross-entropy loss"),
        ("error", ("error",), "top-1 error"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run, rows in runs.items():
            for split, style in (("train", "--"), ("eval", "-")):
                key = keys[0]
                pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, style, marker="o" if split == "eval" else None,
                            markersize=3, label=f"{run} {split}")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if name == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", help="output directory (default: <first workdir>/plots)")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.workdirs[0], "plots")
    for path in plot_runs(args.workdirs, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
