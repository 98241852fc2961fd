"""Startup of an image-folder source at ImageNet size: 200k and 1M generated tiny JPEGs.

Generates ``<tmp>/train/<class>/<file>.JPEG`` (1,000 classes like ImageNet; 16x16 JPEGs of a
few hundred bytes, one encoding per class and variant written to many files), then measures,
each in a fresh process (so nothing is memoised or imported in advance):

* ``source``: ``folder_source(root, "train", cache=...)``: the directory scan plus the file
  reads (whole files when cached in memory, the 16-byte heads otherwise);
* ``dataset``: ``create_dataset("folder", "train", train=True, global_batch_size=256,
  image_size=8, ...)`` up to its first batch, which includes the normalisation statistics
  (mean/std over at most 2,000 evenly spaced images).

Each for ``cache=auto`` (the tiny files fit the 1 GiB budget, so their bytes are held in
memory) and ``cache=False`` (what an ImageNet-size folder of real JPEGs gets: files are read
on demand). Prints a Markdown table: wall seconds, microseconds per file, peak RSS, and how
many times the folder was scanned. The page cache is warm (the files were just written).

Each figure is the fastest of ``--repeats`` runs (the machine may be shared); with several
``--repo`` checkouts (e.g. ``git worktree add /tmp/before HEAD~1``) their runs alternate, so
load affects them alike.

    python benchmarks/folder_startup.py [--files 200000,1000000] [--dir /tmp] [--keep]
    python benchmarks/folder_startup.py --data /tmp/folder_startup_200000  # reuse a tree
    python benchmarks/folder_startup.py --data DIR --repo /tmp/before --repo .  # compare code
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = 1000
VARIANTS = 4  # distinct encodings per class, so images are not all identical


def generate(root: Path, files: int, classes: int = CLASSES) -> float:
    """Write ``files`` JPEGs spread evenly over ``classes`` folders; returns seconds taken."""
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for c in range(classes):
        name = f"n{c:08d}"
        class_dir = root / "train" / name
        class_dir.mkdir(parents=True, exist_ok=True)
        blobs = []
        for _ in range(VARIANTS):
            # A colour gradient plus mild noise: a real-looking JPEG of ~300-400 bytes.
            base = rng.integers(0, 256, 3)
            ramp = np.linspace(0, 64, 16)[None, :, None] + rng.normal(0, 4, (16, 16, 3))
            pixels = np.clip(base + ramp, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "JPEG", quality=90)
            blobs.append(buf.getvalue())
        count = files // classes + (c < files % classes)
        for i in range(count):
            with open(class_dir / f"{name}_{i}.JPEG", "wb") as f:
                f.write(blobs[i % VARIANTS])
    return time.perf_counter() - start


def _measure(kind: str, root: str, cache: str, repo: str) -> dict:
    """Runs in the child process: one measurement, returned as a dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, repo)
    from resnet_jax import data
    from resnet_jax.data import sources
    from resnet_jax.data.sources import folder as folder_module

    cache_opt: bool | str = "auto" if cache == "auto" else cache == "true"
    if not sources.__file__.startswith(repo):
        raise SystemExit(f"imported {sources.__file__}, not the code in {repo}")
    scans = {"n": 0}
    scan = getattr(folder_module, "_scan_folder", None)
    if scan is not None:  # count real scans (memo misses), not folder_source calls

        def counting_scan(*args, **kwargs):
            scans["n"] += 1
            return scan(*args, **kwargs)

        folder_module._scan_folder = counting_scan
    else:  # code without a memo: every folder_source call scans
        fs = sources.folder_source

        def counting_source(*args, **kwargs):
            scans["n"] += 1
            return fs(*args, **kwargs)

        sources.folder_source = counting_source
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "source":
        src = sources.folder_source(root, "train", cache=cache_opt)
        n, cached = len(src), src.encoded is not None
    else:
        ds = data.create_dataset(
            "folder", "train", train=True, global_batch_size=256, image_size=8,
            data_dir=root, cache=cache_opt, device_count=1, process_count=1, process_index=0,
        )  # fmt: skip
        next(iter(ds))
        n, cached = ds.num_examples, ds.source.encoded is not None
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "kind": kind, "cache": cache, "files": n, "in_memory": cached, "seconds": seconds,
        "peak_rss_mb": peak / 1024, "import_rss_mb": base_rss / 1024, "scans": scans["n"],
    }  # fmt: skip


def measure(kind: str, root: Path, cache: str, repo: str) -> dict:
    """One measurement in a fresh Python process (the code imported from ``repo``)."""
    cmd = [sys.executable, __file__, "--measure", kind, "--data", str(root), "--cache", cache,
           "--repo", repo]  # fmt: skip
    # -P: the child imports resnet_jax from --repo only, not from this script's checkout.
    out = subprocess.run(cmd[:1] + ["-P"] + cmd[1:], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def _row(r: dict, repo: str) -> str:
    """A Markdown table row of one measurement."""
    return (
        f"| {r['files']:,} | {Path(repo).name} | {r['kind']} | {r['cache']} | {r['in_memory']} "
        f"| {r['seconds']:.1f} | {1e6 * r['seconds'] / r['files']:.1f} | "
        f"{r['peak_rss_mb']:.0f} ({r['import_rss_mb']:.0f}) | {r['scans']} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", default="200000,1000000", help="comma-separated file counts")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to generate the trees")
    p.add_argument("--data", help="measure this existing tree (root holding train/) instead")
    p.add_argument("--keep", action="store_true", help="keep the generated trees")
    p.add_argument("--kinds", default="source,dataset")
    p.add_argument("--caches", default="auto,false")
    p.add_argument("--repeats", type=int, default=1, help="report the fastest of this many")
    p.add_argument("--repo", action="append", help="checkout whose resnet_jax is measured "
                   "(repeatable; default: this one)")  # fmt: skip
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.data, args.cache, args.repo[0])))
        return
    repos = [str(Path(r).resolve()) for r in args.repo or [REPO]]

    sys.path.insert(0, str(REPO))  # here, not at import: --measure children import --repo only
    from benchmarks import machine

    host = machine.host()
    print(f"CPU: {machine.cpu_name()}; {host['cores']} cores; Python {host['python']}")
    print(f"code: {', '.join(repos)}; fastest of {args.repeats} run(s)")
    print("| files | code | measured | cache | in memory | seconds | us/file | peak RSS MB "
          "(after imports) | scans |")  # fmt: skip
    print("|---:|---|---|---|---|---:|---:|---:|---:|")
    roots = [(Path(args.data), None)] if args.data else [
        (Path(args.dir) / f"folder_startup_{n}", n) for n in map(int, args.files.split(","))
    ]  # fmt: skip
    for root, n in roots:
        made = False
        if n is not None and not (root / "train").is_dir():
            seconds = generate(root, n)
            made = True
            print(f"<!-- generated {n} files in {root} in {seconds:.1f} s -->", flush=True)
        try:
            for kind in args.kinds.split(","):
                for cache in args.caches.split(","):
                    best: dict[str, dict] = {}
                    for _ in range(args.repeats):
                        for repo in repos:  # alternate, so load affects every checkout alike
                            r = measure(kind, root, cache, repo)
                            if repo not in best or r["seconds"] < best[repo]["seconds"]:
                                best[repo] = r
                    for repo, r in best.items():
                        print(_row(r, repo), flush=True)
        finally:
            if made and not args.keep:
                shutil.rmtree(root)


if __name__ == "__main__":
    main()
