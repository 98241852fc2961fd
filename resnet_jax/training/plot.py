"""PNG plots of a run's metrics: loss, and train/eval top-1 error, against the step or epoch.

    python -m resnet_jax.training.plot runs/quickstart      # -> runs/quickstart/plots/*.png
    python -m resnet_jax.training.plot runs/a runs/b --x epoch --out docs/plots

Several workdirs plot on the same axes (e.g. plain20 vs resnet20, 2015 paper Fig. 6).
"""

from __future__ import annotations

import argparse
import os
import sys

from resnet_jax.training.metrics import read_jsonl


def _epochs_per_step(rows: list[dict]) -> float:
    """From the train rows, which log the epoch (eval rows log only the step)."""
    logged = [r for r in rows if r["split"] == "train" and r.get("epoch")]
    if not logged:
        raise ValueError("no train row logs an epoch; plot against the step (--x step)")
    return logged[-1]["epoch"] / logged[-1]["step"]


def curve(rows: list[dict], split: str, key: str, scale: float = 1.0) -> list[tuple[float, float]]:
    """(step * scale, value) of ``split``'s rows that log ``key``, in step order. A resumed run
    logs again the steps after its last checkpoint: the later row of a step wins."""
    by_step = {r["step"]: r[key] for r in rows if r["split"] == split and key in r}
    return [(step * scale, by_step[step]) for step in sorted(by_step)]


def plot_runs(workdirs: list[str], out_dir: str, x: str = "step") -> list[str]:
    """Writes loss.png and error.png to ``out_dir`` against ``x`` ("step" or "epoch"); returns
    their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    runs = {os.path.basename(os.path.normpath(w)): read_jsonl(os.path.join(w, "metrics.jsonl"))
            for w in workdirs}
    scale = {run: _epochs_per_step(rows) if x == "epoch" else 1.0 for run, rows in runs.items()}
    paths = []
    for name, keys, ylabel in (
        ("loss", ("loss",), "cross-entropy loss"),
        ("error", ("error",), "top-1 error"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for color, (run, rows) in enumerate(runs.items()):  # one colour per run
            for split, style in (("train", "--"), ("eval", "-")):
                pts = curve(rows, split, keys[0], scale[run])
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, style, color=f"C{color % 10}",
                            marker="o" if split == "eval" else None,
                            markersize=3, label=f"{run} {split}")
        ax.set_xlabel(x)
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
    p.add_argument("--x", choices=("step", "epoch"), default="step", help="horizontal axis")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.workdirs[0], "plots")
    for path in plot_runs(args.workdirs, out, args.x):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
