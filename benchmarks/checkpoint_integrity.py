"""The cost of per-array checksums (CRC-32 recorded in a checkpoint's meta, verified on restore)
for ResNet-50's training state: params, BN statistics and SGD-momentum state (~25.6M + 25.6M
floats, real arrays on the host), saved and restored through :class:`Checkpointer` with and
without them, alternating, best of ``--repeats``.

    python benchmarks/checkpoint_integrity.py [--repeats 3] [--dir /tmp/ckpt-bench]

Prints one JSON line: the machine, the command, seconds per save/restore with and without, and
the checksums alone (the numbers above are noisy where other processes share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import resnet_jax  # noqa: E402
from benchmarks import machine  # noqa: E402
from resnet_jax.checkpoint import Checkpointer, checksums  # noqa: E402


def resnet50_state(image_size: int = 64) -> dict:
    """ResNet-50's training state as numpy (the parameter shapes do not depend on image_size)."""
    model = resnet_jax.create_model("resnet50", num_classes=1000)
    variables = jax.jit(lambda: model.init(
        jax.random.PRNGKey(0), np.zeros((1, image_size, image_size, 3), np.float32), train=False))()
    opt_state = optax.sgd(0.1, momentum=0.9).init(variables["params"])
    # The momentum starts at zeros; random values compress like trained ones (not at all).
    opt_state = jax.tree.map(lambda x: np.random.default_rng(0).standard_normal(
        x.shape).astype(x.dtype) if x.ndim else x, jax.device_get(opt_state))
    return jax.device_get({"step": np.int32(1), "params": variables["params"],
                           "batch_stats": variables["batch_stats"], "opt_state": opt_state})


def time_once(directory: str, state: dict, checksums: bool) -> tuple[float, float]:
    shutil.rmtree(directory, ignore_errors=True)
    ckpt = Checkpointer(directory, async_save=False, keep_best=False, checksums=checksums)
    t = time.perf_counter()
    ckpt.save(1, state, {"step": 1})
    ckpt.wait()
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    ckpt.read_fully(1)  # every array to the host, checksums verified when recorded
    restore_s = time.perf_counter() - t
    ckpt.close()
    return save_s, restore_s


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="", help="where to write (default: a temporary directory)")
    args = p.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="ckpt-bench-")
    state = resnet50_state()
    sizes = [x.nbytes for x in jax.tree.leaves(state)]
    times: dict[str, dict[str, list[float]]] = {
        k: {"save_s": [], "restore_s": []} for k in ("without", "with")}
    for _ in range(args.repeats):
        for key in ("without", "with"):  # alternating: drift hits both alike
            save_s, restore_s = time_once(os.path.join(root, key), state, key == "with")
            times[key]["save_s"].append(save_s)
            times[key]["restore_s"].append(restore_s)
    shutil.rmtree(root, ignore_errors=True)
    crc_s = []
    for _ in range(args.repeats):  # the checksums alone (the save's part; restore's is alike)
        t = time.perf_counter()
        checksums(state)
        crc_s.append(time.perf_counter() - t)
    best = {k: {m: min(v) for m, v in d.items()} for k, d in times.items()}
    result = {
        "command": "python benchmarks/checkpoint_integrity.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine.machine_line(machine.machine()),
        "arrays": len(sizes), "megabytes": round(sum(sizes) / 1e6, 1),
        "best_of": args.repeats, **best,
        "added_s": {m: best["with"][m] - best["without"][m] for m in ("save_s", "restore_s")},
        "checksums_alone_s": min(crc_s),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
