"""Helper of benchmarks/device_check.sh: environment probe, result parsing, one-line summary.

Standard library only, so any python3 can run it, with or without JAX. Each subcommand is one
small job the shell script would otherwise do with fragile text tools:

    probe                              JSON: python, jax, backend, device kind, missing modules
    get JSON_FILE KEY                  one value of a JSON object ('' for null)
    lacks PROBE_JSON STEP              the modules STEP needs that the probed python lacks
    wheels WHEEL_DIR [--have-accel]    the wheels whose distribution this python lacks
    extract ARCHIVE DEST [PER_CLASS]   a split/class/file image archive (or a subset) into DEST
    input-pipeline DATASETS -- ARGS    benchmarks/input_pipeline.py with its archives in DATASETS
    record STATE STEP STATUS SECONDS NOTE [PARSER ARGS...]
                                       STATE/STEP.json: the step's status and parsed figures
    summary STATE MODE TOTAL_S [ABORTED_IN]
                                       the final ``device_check: {json}`` line; exit status 1
                                       if a step failed or none could run
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_ERROR = 0.0875  # ResNet-20 on CIFAR-10, He et al. 2015 Table 6
RECIPE_STEPS = 64_000  # configs/resnet20.py: the paper's 64k iterations at batch 128
STEPS = ("env", "train_step", "input_pipeline", "cifar")
# The python modules each step imports (importable names, not distribution names).
NEEDS = {
    "train_step": ["numpy", "jax", "flax", "optax", "chex", "orbax.checkpoint", "ml_collections"],
    "input_pipeline": ["numpy", "tensorflow"],
    "cifar": ["numpy", "jax", "flax", "optax", "chex", "orbax.checkpoint", "ml_collections",
              "tensorflow"],
}  # fmt: skip
# Wheels never laid over a python whose JAX already drives an accelerator: they would shadow
# the CUDA build it came with.
ACCEL_STACK = re.compile(r"^(jax|jaxlib|jax_cuda\d+_.*|jax_rocm.*|libtpu.*|nvidia_.*)$")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def probe() -> None:
    """What this python can run: JAX's backend and devices, and the modules each step lacks."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import machine  # standard library only

    host = machine.host()
    info: dict = {
        "python": host["python"],
        "executable": sys.executable,
        "host_cores": host["cores"],
        "cpu": machine.cpu_name(),
        "jax": None,
        "backend": None,
        "device_kind": None,
        "devices": 0,
    }
    modules = sorted({m for ms in NEEDS.values() for m in ms})
    info["missing"] = [m for m in modules if not _installed(m)]
    if "jax" not in info["missing"]:
        try:
            import jax

            info["jax"] = jax.__version__
            info["backend"] = jax.default_backend()
            devices = jax.devices()
            info["device_kind"] = devices[0].device_kind
            info["devices"] = len(devices)
        except Exception as e:  # noqa: BLE001 - any failure means: no usable JAX here
            info["jax_error"] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps(info))


def _dist_name(wheel: Path) -> str:
    """The normalised distribution name of a wheel file (PEP 427: name-version-...whl)."""
    return re.sub(r"[-_.]+", "_", wheel.name.split("-")[0]).lower()


def wheels(wheel_dir: str, have_accel: bool) -> None:
    """Prints the wheels of WHEEL_DIR whose distribution this python does not have yet."""
    from importlib import metadata

    have = {re.sub(r"[-_.]+", "_", d.metadata["Name"] or "").lower()
            for d in metadata.distributions()}  # fmt: skip
    for wheel in sorted(Path(wheel_dir).glob("*.whl")):
        name = _dist_name(wheel)
        if name in have or (have_accel and ACCEL_STACK.match(name)):
            continue
        print(wheel)


def extract(archive: str, dest: str, per_class: str | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from resnet_jax.data.testing import extract_subset  # standard library only

    n = int(per_class) if per_class else None
    t0 = time.perf_counter()
    extract_subset(archive, dest, per_class=n)
    files = sum(1 for p in Path(dest).rglob("*") if p.is_file())
    print(f"extracted {files} images from {archive} in {time.perf_counter() - t0:.1f} s")


def input_pipeline(datasets: str, args: list[str]) -> None:
    """Runs benchmarks/input_pipeline.py with the archives of DATASETS (it reads them from
    resnet_jax.data.testing, which points at ../shared/datasets: absent on a lent machine)."""
    sys.path.insert(0, str(ROOT))
    from resnet_jax.data import testing

    testing.SHARED_DATASETS = Path(datasets)
    testing.CIFAR10_ARCHIVE = Path(datasets) / "cifar10-jpg.tar.gz"
    testing.IMAGENETTE_ARCHIVE = Path(datasets) / "imagenette2-224.tar.gz"
    script = ROOT / "benchmarks" / "input_pipeline.py"
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


# ---- parsers: a finished step's files -> its figures --------------------------------------
def parse_train_step(results_json: str) -> dict:
    """The row of ``train_step.py --out``: img/s, MFU and what they were measured on."""
    data = json.loads(Path(results_json).read_text())
    row = data["rows"][0]
    return {
        "train_step": f"{row['model']} {row['dtype']} batch {row['batch']} "
                      f"{row['image_size']}px",
        "train_img_s": row["images_per_s"],
        "mfu": row.get("mfu"),
        "mfu_peak": f"{row.get('peak_tflops')} TFLOP/s ({row.get('peak_source')})",
        "train_ms_per_step": row["ms_per_step"],
        "train_compile_s": row.get("compile_s"),
        "bench_device": data.get("machine", {}).get("device"),
    }  # fmt: skip


_PIPELINE_LINE = re.compile(r"^(?P<case>\S+ \w+): ours (?P<ours>[\d.]+) img/s", re.M)


def parse_input_pipeline(log: str) -> dict:
    """The per-case ``<data> <preset>: ours N img/s, ...`` lines of input_pipeline.py."""
    found = {m["case"]: float(m["ours"]) for m in _PIPELINE_LINE.finditer(Path(log).read_text())}
    if not found:
        raise ValueError(f"no 'ours N img/s' lines in {log}")
    return {"pipeline_img_s": found, "pipeline_cores": os.cpu_count()}


def parse_cifar(workdir: str, planned_steps: str) -> dict:
    """The last evaluation in the run's metrics.jsonl, next to the paper's error."""
    planned = int(planned_steps)
    metrics = Path(workdir) / "metrics.jsonl"  # absent when stopped before the first log
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    evals = [r for r in rows if r.get("split") == "eval"]
    trained = max((r["step"] for r in rows), default=0)
    out = {"cifar_test_error": None, "cifar_eval_step": None, "cifar_steps_trained": trained,
           "cifar_steps_planned": planned, "paper_error": PAPER_ERROR}  # fmt: skip
    if not evals:
        out["cifar_note"] = f"no evaluation within the time budget ({trained} steps trained)"
        return out
    last = evals[-1]
    out["cifar_test_error"] = last["error"]
    out["cifar_eval_step"] = last["step"]
    if last["step"] < planned:
        note = f"evaluated at step {last['step']} of {planned} (time budget)"
    elif planned < RECIPE_STEPS:
        note = f"a {planned}-step run (the recipe trains {RECIPE_STEPS})"
    else:
        note = "the full recipe: comparable with the paper"
    out["cifar_note"] = note + ("" if "comparable" in note else ": not comparable with the paper")
    return out


PARSERS = {"train_step": parse_train_step, "input_pipeline": parse_input_pipeline,
           "cifar": parse_cifar}  # fmt: skip


def record(state: str, step: str, status: str, seconds: str, note: str, parse: list[str]) -> None:
    """Writes STATE/STEP.json; a parser failure turns an 'ok' step into 'failed'."""
    rec: dict = {"status": status, "seconds": round(float(seconds), 1)}
    if note:
        rec["note"] = note
    if parse:
        try:
            rec["figures"] = PARSERS[parse[0]](*parse[1:])
        except Exception as e:  # noqa: BLE001 - reported, not raised: the run goes on
            rec["status"] = "failed"
            rec["note"] = (note + "; " if note else "") + f"unreadable results: {e}"[:300]
    Path(state, f"{step}.json").write_text(json.dumps(rec))
    figures = rec.get("figures", {})
    print(_describe(step, rec, figures))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _describe(step: str, rec: dict, f: dict) -> str:
    """One human line per step, printed as soon as it ends."""
    head = f"   -> {step}: {rec['status']} in {rec['seconds']:.1f} s"
    if rec.get("note"):
        head += f" ({rec['note']})"
    if rec["status"] not in ("ok", "stopped"):
        return head
    if step == "train_step":
        return (f"{head}\n   {f['train_step']}: {f['train_img_s']:.1f} img/s, "
                f"MFU {_pct(f['mfu'])} of {f['mfu_peak']}")  # fmt: skip
    if step == "input_pipeline":
        rates = ", ".join(f"{k} {v:.0f} img/s" for k, v in f["pipeline_img_s"].items())
        return f"{head}\n   on {f['pipeline_cores']} host cores: {rates}"
    if step == "cifar":
        paper = f"paper: {_pct(PAPER_ERROR)}, He et al. 2015 Table 6"
        if f["cifar_test_error"] is None:
            return f"{head}\n   ResNet-20 CIFAR-10: {f['cifar_note']} ({paper})"
        return (f"{head}\n   ResNet-20 CIFAR-10 test error {_pct(f['cifar_test_error'])} "
                f"at step {f['cifar_eval_step']} of {f['cifar_steps_planned']} "
                f"({paper}): {f['cifar_note']}")  # fmt: skip
    return head


def summary(state: str, mode: str, total_s: str, aborted_in: str | None = None) -> int:
    """Merges the probe and the steps' records into one line (always the script's last)."""
    st = Path(state)
    probe = json.loads((st / "probe.json").read_text()) if (st / "probe.json").exists() else {}
    out: dict = {
        "mode": mode,
        "device_kind": probe.get("device_kind"),
        "backend": probe.get("backend"),
        "devices": probe.get("devices"),
        "host_cores": probe.get("host_cores") or os.cpu_count(),
        "python": probe.get("python"),
        "jax": probe.get("jax"),
        "train_step": None, "train_img_s": None, "mfu": None,
        "pipeline_img_s": None,
        "cifar_test_error": None, "paper_error": PAPER_ERROR, "cifar_note": None,
    }  # fmt: skip
    status, seconds = {}, {}
    for step in STEPS:
        path = st / f"{step}.json"
        if not path.exists():
            status[step] = "not run"
            continue
        rec = json.loads(path.read_text())
        status[step] = rec["status"] + (f": {rec['note']}" if rec.get("note") else "")
        seconds[step] = rec["seconds"]
        out.update(rec.get("figures", {}))
    if out["cifar_test_error"] is None and out["cifar_note"] is None:
        out["cifar_note"] = status["cifar"]
    out["status"] = status
    out["seconds"] = {**seconds, "total": round(float(total_s), 1)}
    if aborted_in:
        out["aborted_in"] = aborted_in
    print("device_check: " + json.dumps(out), flush=True)
    failed = aborted_in or any(s.startswith(("failed", "not run")) for s in status.values())
    return 1 if failed or not probe.get("jax") else 0


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "probe":
        probe()
    elif cmd == "get":
        value = json.loads(Path(args[0]).read_text()).get(args[1])
        print("" if value is None else value)
    elif cmd == "lacks":
        missing = json.loads(Path(args[0]).read_text()).get("missing", [])
        print(" ".join(m for m in NEEDS[args[1]] if m in missing))
    elif cmd == "wheels":
        wheels(args[0], "--have-accel" in args[1:])
    elif cmd == "extract":
        extract(*args)
    elif cmd == "input-pipeline":
        if args[1:2] != ["--"]:
            raise SystemExit("usage: input-pipeline DATASETS -- ARGS...")
        input_pipeline(args[0], args[2:])
    elif cmd == "record":
        record(*args[:5], parse=args[5:])
    elif cmd == "summary":
        sys.exit(summary(*args))
    else:
        raise SystemExit(f"unknown subcommand {cmd!r}; see the module docstring")


if __name__ == "__main__":
    main(sys.argv[1:])
