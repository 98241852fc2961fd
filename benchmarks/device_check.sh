#!/usr/bin/env bash
# Device check (issue 14, section 4): in at most 10 minutes on one GPU, with no internet,
#   (a) a python whose JAX drives the accelerator, topped up from wheels prepared beforehand,
#   (b) the ResNet-50 bf16 train step at batch 256: img/s and MFU,
#   (c) the input pipeline on all host cores: img/s,
#   (d) with the time left, ResNet-20 on CIFAR-10 with the paper's full recipe: test error
#       next to the paper's 8.75%,
# and a last line `device_check: {json}`. See docs/device_check.md.
#
#   bash benchmarks/device_check.sh                   # on the accelerator machine
#   bash benchmarks/device_check.sh --cpu-smoke       # the same steps at toy size on CPU (< 3 min)
#   bash benchmarks/device_check.sh --prepare-wheels [image|full]   # with internet, beforehand
#
# Environment: PYTHON (a python to try first), WHEEL_DIR (default ./.whl), DATASETS_DIR (holds
# cifar10-jpg.tar.gz [and imagenette2-224.tar.gz]), DEVICE_CHECK_SECONDS (the whole budget),
# DEVICE_CHECK_LOGS (keep every step's log and results there), CIFAR_STEPS (shorten step d).
# Exit status: 0 every step ran or was skipped for a stated reason; 1 a step failed; 2 usage;
# 3 no accelerator JAX, so the toy sizes ran on CPU instead.
set -Eeuo pipefail
export LC_NUMERIC=C  # a '.' in $EPOCHREALTIME, whatever the locale

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
HELPER=benchmarks/device_check.py
WHEEL_DIR=${WHEEL_DIR:-$ROOT/.whl}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

# The comment block above, without its '#'.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

# ---- --prepare-wheels: run beforehand, on a machine with internet ---------------------------
prepare_wheels() {
    local what=${1:-image} py=${PYTHON:-python3} pyver=${WHEEL_PYTHON_VERSION:-3.12}
    local dl=(-m pip download --only-binary=:all: --python-version "$pyver" --implementation cp
              "${PLATFORMS[@]}" -d "$WHEEL_DIR")
    mkdir -p "$WHEEL_DIR"
    case $what in
        image)
            # The lent machines' image has CUDA JAX, flax, optax, orbax, chex, absl-py and PyYAML
            # but not ml-collections (docs/device_check.md): one small pure-Python wheel.
            "$py" "${dl[@]}" --no-deps "$(grep -i '^ml-collections' requirements.txt)" ;;
        full)
            # A machine with a GPU but no JAX: everything, dependencies included (several GB;
            # for a disk that machine mounts, far over what a 64 MiB carried tree can hold).
            "$py" "${dl[@]}" -r requirements.txt "jax[cuda12]" ;;
        *) echo "--prepare-wheels takes 'image' or 'full', not '$what'" >&2; return 2 ;;
    esac
    ls -l "$WHEEL_DIR"
}

MODE=full
case "${1:-}" in
    "") ;;
    --cpu-smoke) MODE=cpu-smoke ;;
    --prepare-wheels) prepare_wheels "${2:-image}"; exit ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

# ---- budget, scratch space, traps -----------------------------------------------------------
# 9 minutes leave a minute of the 10 for the machine's start-up noise and the last step's grace.
if [[ $MODE == cpu-smoke ]]; then TOTAL=${DEVICE_CHECK_SECONDS:-170}; else TOTAL=${DEVICE_CHECK_SECONDS:-540}; fi
RESERVE=25  # seconds kept back at the end: a timed-out step's grace (20 s) and the summary
T_START=$EPOCHREALTIME
DEADLINE=$((SECONDS + TOTAL))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
LOGS=${DEVICE_CHECK_LOGS:-$WORK/logs}
STATE=$WORK/state
mkdir -p "$LOGS" "$STATE"
STEP=setup
HPY=python3  # runs the helper (standard library only) until a python with JAX is chosen
SUMMARY_DONE=0
FINAL_RC=0

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
time_left() { echo $((DEADLINE - SECONDS - RESERVE)); }

on_err() { echo "device_check: step '$STEP' failed at line $1: $2" >&2; }
on_exit() {
    local rc=$?
    trap - ERR
    if ((SUMMARY_DONE == 0)); then
        # An unexpected error ended the script: still end with the summary line.
        "$HPY" "$HELPER" summary "$STATE" "$MODE" "$(since "$T_START")" "$STEP" || true
        rc=1
    fi
    # Scratch (images, checkpoints, installs) goes; the logs stay if asked for or if a step failed.
    if [[ -n ${DEVICE_CHECK_LOGS:-} ]] || ((rc == 0)); then
        rm -rf "$WORK"
    else
        rm -rf "$WORK/cifar10" "$WORK/runs" "$WORK/site" "$WORK/venv"
    fi
    if [[ -n ${DEVICE_CHECK_LOGS:-} ]] || ((rc != 0)); then echo "logs: $LOGS" >&2; fi
    exit "$rc"
}
trap 'on_err $LINENO "$BASH_COMMAND"' ERR
trap on_exit EXIT

banner() { echo; echo "== [$(date -u +%H:%M:%S)] $*"; }

# run_step MAX_S LOG CMD...: CMD under the smaller of MAX_S and the time left (SIGTERM, then
# SIGKILL 20 s later), its output in LOG, the tail shown if it fails. Sets RC (124: timed out).
run_step() {
    local max=$1 log=$2 left budget
    shift 2
    left=$(time_left)
    budget=$((left < max ? left : max))
    echo "   budget ${budget} s: $*"
    RC=0
    timeout --signal=TERM --kill-after=20 "$budget" "$@" >"$log" 2>&1 || RC=$?
    if ((RC != 0 && RC != 124)); then
        tail -n 25 "$log" | sed 's/^/   | /'
    fi
}

# record STEP STATUS SECONDS NOTE [PARSER ARGS...]: the step's outcome and figures, printed.
record() { "$HPY" "$HELPER" record "$STATE" "$@"; }
status_of() { if (($1 == 0)); then echo ok; else echo failed; fi; }
note_of() { case $1 in 0) echo "" ;; 124) echo "out of time" ;; *) echo "exit status $1" ;; esac; }

# ---- (a) the environment: a python whose JAX drives the accelerator --------------------------
STEP=env
banner "env: a python with JAX on an accelerator (mode $MODE, budget $TOTAL s)"
T0=$EPOCHREALTIME
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# The smoke run is a CPU run wherever it runs.
if [[ $MODE == cpu-smoke ]]; then export JAX_PLATFORMS=cpu; fi

# probe PY: writes $STATE/probe.json; true if PY imports JAX at all.
probe() {
    "$1" "$HELPER" probe >"$STATE/probe.json" 2>>"$LOGS/env.log" || return 1
    [[ -n $("$1" "$HELPER" get "$STATE/probe.json" jax) ]]
}
backend() { "$HPY" "$HELPER" get "$STATE/probe.json" backend; }

PY="" CPU_PY="" NOTE=""
for cand in ${PYTHON:-} .venv/bin/python python3 python; do
    command -v "$cand" >/dev/null 2>&1 || continue
    if ! probe "$cand"; then echo "   $cand: no JAX"; continue; fi
    echo "   $cand: JAX on $(backend) ($("$cand" "$HELPER" get "$STATE/probe.json" device_kind))"
    if [[ $MODE == cpu-smoke ]]; then PY=$cand; break; fi
    if [[ $(backend) != cpu ]]; then PY=$cand; break; fi
    CPU_PY=${CPU_PY:-$cand}
done

# No accelerator JAX installed, but a CUDA JAX among the prepared wheels: a fresh virtualenv.
if [[ -z $PY && $MODE == full ]] && compgen -G "$WHEEL_DIR/jax_cuda*_plugin-*.whl" >/dev/null; then
    cuda=$(basename "$(compgen -G "$WHEEL_DIR/jax_cuda*_plugin-*.whl" | head -n 1)")
    cuda=${cuda#jax_}; cuda=${cuda%%_plugin*}
    echo "   installing requirements.txt + jax[$cuda] from $WHEEL_DIR into $WORK/venv"
    if python3 -m venv "$WORK/venv" >>"$LOGS/env.log" 2>&1 &&
        "$WORK/venv/bin/python" -m pip install -q --no-index --find-links "$WHEEL_DIR" \
            -r requirements.txt "jax[$cuda]" >>"$LOGS/env.log" 2>&1 &&
        probe "$WORK/venv/bin/python" && [[ $(backend) != cpu ]]; then
        PY=$WORK/venv/bin/python
    else
        echo "   that failed (see $LOGS/env.log)"
    fi
fi

if [[ -z $PY && -n $CPU_PY ]]; then
    # Run what can run: the toy sizes, on CPU. These are not device figures.
    echo "   NO JAX WITH A GPU/TPU BACKEND: not installed, and no CUDA JAX wheels in $WHEEL_DIR."
    echo "   Running the --cpu-smoke sizes on CPU instead (see docs/device_check.md)."
    MODE=cpu-fallback PY=$CPU_PY NOTE="no accelerator JAX: CPU at toy sizes"
    probe "$PY" || true
fi

if [[ -n $PY ]]; then
    HPY=$PY
    # Modules this python lacks, from the prepared wheels (never over its own CUDA JAX stack).
    if compgen -G "$WHEEL_DIR/*.whl" >/dev/null; then
        accel=()
        if [[ $(backend) != cpu ]]; then accel=(--have-accel); fi
        mapfile -t todo < <("$PY" "$HELPER" wheels "$WHEEL_DIR" "${accel[@]}")
        if ((${#todo[@]})); then
            echo "   installing ${#todo[@]} wheel(s) from $WHEEL_DIR into $WORK/site:" \
                 "$(basename -a "${todo[@]}" | tr '\n' ' ')"
            # A failed install is not fatal: the steps that need those modules are skipped.
            if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target "$WORK/site" "${todo[@]}" >>"$LOGS/env.log" 2>&1; then
                export PYTHONPATH="$WORK/site:$PYTHONPATH"
                probe "$PY" || true
            else
                echo "   pip could not install them (see $LOGS/env.log)"
                NOTE="wheel install failed"
            fi
        fi
    fi
    echo "   using $PY: $(tr -d '\n' <"$STATE/probe.json")"
    record env ok "$(since "$T0")" "$NOTE"
else
    echo "   no python here imports JAX (tried: ${PYTHON:-} .venv/bin/python python3 python);" \
         "install requirements.txt or put wheels in $WHEEL_DIR (docs/device_check.md)"
    record env failed "$(since "$T0")" "no python with JAX"
fi

# lacks STEP: the modules STEP needs that the chosen python lacks ("" when it can run).
lacks() {
    if [[ -z $PY ]]; then echo "jax"; return; fi
    "$HPY" "$HELPER" lacks "$STATE/probe.json" "$1"
}

# find_datasets FILE...: the first folder holding every FILE: DATASETS_DIR, a copy carried in
# the tree (.datasets/ or shared/datasets/), then ../shared/datasets beside the checkout.
find_datasets() {
    local d f
    for d in "${DATASETS_DIR:-}" .datasets shared/datasets ../shared/datasets; do
        [[ -n $d ]] || continue
        for f in "$@"; do [[ -f $d/$f ]] || continue 2; done
        (cd "$d" && pwd)
        return
    done
}
CIFAR_DIR=$(find_datasets cifar10-jpg.tar.gz)
PIPELINE_DIR=$(find_datasets cifar10-jpg.tar.gz imagenette2-224.tar.gz)

# ---- (b) the train-step benchmark ------------------------------------------------------------
STEP=train_step
if [[ $MODE == full ]]; then
    banner "train_step: ResNet-50 bf16 batch 256 (benchmarks/train_step.py)"
    args=(--models resnet50 --batch 256 --dtypes bfloat16 --repeats 5) max=180
else
    banner "train_step: ResNet-20 float32 batch 8 (toy size)"
    args=(--models resnet20 --batch 8 --dtypes float32 --repeats 1 --warmup 1 --min_seconds 0.2)
    max=60
fi
T0=$EPOCHREALTIME
lacking=$(lacks train_step)
if [[ -n $lacking ]]; then
    record train_step skipped "$(since "$T0")" "python modules missing: $lacking"
else
    run_step "$max" "$LOGS/train_step.log" "$PY" benchmarks/train_step.py "${args[@]}" \
        --out "$LOGS/train_step.json"
    record train_step "$(status_of $RC)" "$(since "$T0")" "$(note_of $RC)" \
        train_step "$LOGS/train_step.json"
fi

# ---- (c) the input pipeline on all host cores ------------------------------------------------
STEP=input_pipeline
banner "input_pipeline: resnet_jax.data on $(nproc) host cores (benchmarks/input_pipeline.py)"
if [[ $MODE == full ]]; then
    args=(--seconds 3 --repeats 1) max=120
else
    # 13 images a class: 130, just over one batch of 128.
    args=(--seconds 0.5 --repeats 1 --imagenette-per-class 13 --cifar-per-class 13) max=60
fi
T0=$EPOCHREALTIME
lacking=$(lacks input_pipeline)
if [[ -n $lacking ]]; then
    record input_pipeline skipped "$(since "$T0")" "python modules missing: $lacking"
elif [[ -z $PIPELINE_DIR ]]; then
    record input_pipeline skipped "$(since "$T0")" \
        "needs cifar10-jpg.tar.gz and imagenette2-224.tar.gz in one folder (DATASETS_DIR)"
else
    run_step "$max" "$LOGS/input_pipeline.log" \
        "$PY" "$HELPER" input-pipeline "$PIPELINE_DIR" -- "${args[@]}"
    record input_pipeline "$(status_of $RC)" "$(since "$T0")" "$(note_of $RC)" \
        input_pipeline "$LOGS/input_pipeline.log"
fi

# ---- (d) ResNet-20 on CIFAR-10, the paper's recipe, in the time left --------------------------
STEP=cifar
if [[ $MODE == full ]]; then
    steps=${CIFAR_STEPS:-64000} per_class="" min_left=120
    banner "cifar: ResNet-20, configs/resnet20.py ($steps steps, batch 128), until the budget ends"
    overrides=(--config.num_train_steps="$steps")
else
    steps=${CIFAR_STEPS:-10} per_class=20 min_left=20
    banner "cifar: ResNet-20, configs/resnet20.py at toy size ($steps steps, batch 32, 200 images)"
    overrides=(--config.num_train_steps="$steps" --config.global_batch_size=32
               --config.eval_every_epochs=0)
fi
T0=$EPOCHREALTIME
lacking=$(lacks cifar)
if [[ -n $lacking ]]; then
    record cifar skipped "$(since "$T0")" "python modules missing: $lacking"
elif [[ -z $CIFAR_DIR ]]; then
    record cifar skipped "$(since "$T0")" "cifar10-jpg.tar.gz not found (DATASETS_DIR)"
elif (($(time_left) < min_left)); then
    record cifar skipped "$(since "$T0")" "only $(time_left) s left"
else
    run_step 120 "$LOGS/cifar_extract.log" \
        "$PY" "$HELPER" extract "$CIFAR_DIR/cifar10-jpg.tar.gz" "$WORK/cifar10" $per_class
    if ((RC != 0)); then
        record cifar failed "$(since "$T0")" "extraction: $(note_of $RC)"
    else
        tail -n 1 "$LOGS/cifar_extract.log" | sed 's/^/   /'
        # SIGTERM at the deadline: train.py saves and exits; the last evaluation stands.
        run_step 100000 "$LOGS/cifar.log" "$PY" train.py --config configs/resnet20.py \
            --workdir "$WORK/runs/resnet20" --config.dataset=folder \
            --config.data_dir="$WORK/cifar10" --config.progress_bar=off "${overrides[@]}"
        case $RC in
            0) status=ok note="" ;;
            124) status=stopped note="time budget reached" ;;
            *) status=failed note="exit status $RC" ;;
        esac
        record cifar "$status" "$(since "$T0")" "$note" cifar "$WORK/runs/resnet20" "$steps"
    fi
fi

# ---- the summary: always the last line -------------------------------------------------------
STEP=summary
echo
"$HPY" "$HELPER" summary "$STATE" "$MODE" "$(since "$T_START")" | tee "$LOGS/summary.txt" ||
    FINAL_RC=$?
SUMMARY_DONE=1
# 3: every step ran, but on CPU, where a device was asked for: no device figures.
if ((FINAL_RC == 0)) && [[ $MODE == cpu-fallback ]]; then FINAL_RC=3; fi
exit "$FINAL_RC"
