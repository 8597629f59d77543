#!/usr/bin/env bash
# One GPU run that prints everything worth recording, in under 8 minutes on one GPU.
#
#   benchmarks/gpu.sh --prepare-wheels   # here, with a package index: cp312 wheels into .whl/
#   benchmarks/gpu.sh [--budget 480]     # on the GPU machine (carry .whl), no network needed
#   benchmarks/gpu.sh --dry-run          # on the CPU, a few positions: the whole path, for CI
#
# It runs with the python3 and torch it finds (a GPU image may carry another
# torch than the project pins), installs only what that image lacks from the
# wheels in .whl/, and puts the checkout on the path under the name krypton,
# so nothing is built or downloaded there. Steps, each printed as it runs:
#   1. the machine: GPU, driver, torch and CUDA versions
#   2. the CUDA exactness tests (incremental on CUDA equals naive on the CPU)
#   3. the demo models trained on the GPU (each architecture's default steps, or
#      --train-steps N; 0 keeps seeded random weights)
#   4. naive, Captum, exact and approximate occlusion on VGG16, ResNet18 and
#      InceptionV3, patch 16, stride 4, batch sizes chosen by free GPU memory
#   5. the embedded service with its worker on CUDA, loaded by `krypton bench-api`
# Logs and JSON go to $OUT (or out/gpu); the summary comes last.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
RESULTS="${OUT:-$ROOT/out/gpu}"
WHEELS="$ROOT/.whl"
DRY_RUN=0
BUDGET=480    # seconds for the whole run; steps shrink to fit what is left
TRAIN_STEPS=default  # `krypton demo train`'s steps per architecture
SETTING="1/0.5/16/0.15"  # bisection, as tuned per image for the ResNet18 demo (BENCHMARKS.md)
# Pure-Python or cp312 wheels of what the service and the benchmark need beyond a
# bare GPU image (which has torch, torchvision, numpy, scikit-image, httpx, typer).
WHEEL_PINS=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5
            pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0
            typing-inspection==0.4.5 typing-extensions==4.16.0 python-multipart==0.0.34
            uvicorn==0.54.0 redis==8.1.0 captum==0.9.0 prometheus-client==0.25.0
            h11==0.16.0 anyio==4.16.0 click==8.5.1)
NEEDED_MODULES=(fastapi pydantic pydantic_settings multipart uvicorn redis captum
                prometheus_client typer httpx skimage matplotlib scipy tqdm PIL)

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --budget) BUDGET="$2"; shift ;;
        --train-steps) TRAIN_STEPS="$2"; shift ;;
        --setting) SETTING="$2"; shift ;;
        --prepare-wheels)
            mkdir -p "$WHEELS"
            grep -qx '/.whl/' "$ROOT/.git/info/exclude" 2>/dev/null \
                || echo '/.whl/' >> "$ROOT/.git/info/exclude"
            "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
                --implementation cp --platform manylinux_2_28_x86_64 \
                --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                -d "$WHEELS" "${WHEEL_PINS[@]}"
            du -sh "$WHEELS"
            exit 0 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

mkdir -p "$RESULTS"
step() { printf '\n=== %s (%ds)\n' "$1" "$SECONDS"; }
# A step that fails or overruns its time says so and the run goes on: a lease is
# too short to lose the later steps to an early one.
within() { local limit=$1; shift; timeout "$limit" "$@" || echo "STEP FAILED ($*: exit $?)"; }
left() { echo $(( BUDGET - SECONDS > 30 ? BUDGET - SECONDS : 30 )); }

# --- the environment: missing packages from the wheels, krypton from this checkout
SITE="$(mktemp -d)"
missing=()
for module in "${NEEDED_MODULES[@]}"; do
    "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$module")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing here: ${missing[*]}"
    [ -d "$WHEELS" ] || { echo "no $WHEELS: run benchmarks/gpu.sh --prepare-wheels" >&2; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE/deps" \
        "$WHEELS"/*.whl
fi
# krypton.engine lives in engine/ and so on (setuptools' package-dir); the same map
# as links, so the checkout imports as the installed package would. Everything runs
# from there: in the checkout's root, its krypton/ folder (the command line alone)
# would shadow the package.
mkdir -p "$SITE/src/krypton"
cp -r "$ROOT/krypton/." "$SITE/src/krypton/"
for part in $("$PYTHON" -c 'import sys, tomllib
folders = tomllib.load(open(sys.argv[1], "rb"))["tool"]["setuptools"]["package-dir"]
print(" ".join(f for f in folders.values() if f != "krypton"))' "$ROOT/pyproject.toml"); do
    ln -s "$ROOT/$part" "$SITE/src/krypton/$part"
done
ln -s "$ROOT/tests" "$SITE/src/tests"
cd "$SITE/src"
export PYTHONPATH="$SITE/src:$SITE/deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLCONFIGDIR="$SITE/matplotlib"

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu; MODELS=resnet18; STRIDE=16; JOBS=2; CONCURRENCY=1; TRAIN_STEPS=2
    TRAIN_MODELS=resnet18; VALIDATION=8
else
    DEVICE=cuda; MODELS=vgg16,resnet18,inception_v3; STRIDE=4; JOBS=40; CONCURRENCY=1,8
    TRAIN_MODELS=resnet18,inception_v3,vgg16; VALIDATION=256
fi

step "1. machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader || echo "no nvidia-smi"
"$PYTHON" - <<'PY'
import platform, torch, krypton
print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}, "
      f"krypton from {krypton.__file__}")
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print(f"{torch.cuda.get_device_name()}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
PY

step "2. CUDA exactness tests"
within 90 "$PYTHON" -m pytest -q -p no:cacheprovider -c "$ROOT/pyproject.toml" --rootdir . \
    -m gpu tests/engine > "$RESULTS/gpu-tests.log" 2>&1
tail -5 "$RESULTS/gpu-tests.log"

step "3. demo models"
WEIGHTS="$RESULTS/checkpoints"
: > "$RESULTS/training.txt"
WEIGHT_OPTIONS=()
STEPS_OPTION=()
[ "$TRAIN_STEPS" = default ] || STEPS_OPTION=(--steps "$TRAIN_STEPS")
if [ "$TRAIN_STEPS" != 0 ]; then
    for model in ${TRAIN_MODELS//,/ }; do
        # Training may use what the later steps leave: about half the budget.
        [ $(( SECONDS + 60 )) -lt $(( BUDGET / 2 )) ] || { echo "no time to train $model"; continue; }
        within $(( BUDGET / 2 - SECONDS )) "$PYTHON" -m krypton demo train --model "$model" "${STEPS_OPTION[@]}" \
            --validation "$VALIDATION" --device "$DEVICE" --out "$WEIGHTS" 2>>"$RESULTS/training.log" \
            | tee -a "$RESULTS/training.txt"
    done
    trained=$(ls "$WEIGHTS"/demo-*.pt 2>/dev/null | wc -l)
    if [ "$trained" -eq "$(echo "$TRAIN_MODELS" | tr ',' '\n' | wc -l)" ]; then
        WEIGHT_OPTIONS=(--demo-weights "$WEIGHTS")
    else
        echo "not every model trained: the benchmark uses seeded random weights"
    fi
else
    echo "seeded random weights (--train-steps 0)"
fi

step "4. naive / Captum / exact / approximate ($MODELS, patch 16, stride $STRIDE)"
within $(( $(left) - 90 > 60 ? $(left) - 90 : 60 )) "$PYTHON" -m krypton bench --models "$MODELS" --stride "$STRIDE" --device "$DEVICE" \
    --setting "$SETTING" "${WEIGHT_OPTIONS[@]}" --json "$RESULTS/bench.json" \
    2>"$RESULTS/bench.log" | tee "$RESULTS/bench.txt"

step "5. embedded service, worker on $DEVICE"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KRYPTON_DEVICE="$DEVICE" "$PYTHON" -m krypton serve --port "$PORT" 2>"$RESULTS/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$SITE"' EXIT
for _ in $(seq 1 300); do
    "$PYTHON" -c "import httpx; httpx.get('http://127.0.0.1:$PORT/healthz').raise_for_status()" \
        2>/dev/null && break
    sleep 0.5
done
within "$(left)" "$PYTHON" -m krypton bench-api --url "http://127.0.0.1:$PORT" \
    --image "$ROOT/examples/retina.jpg" --model resnet18 --stride "$STRIDE" --jobs "$JOBS" \
    --concurrency "$CONCURRENCY" --no-direct 2>"$RESULTS/bench-api.log" \
    | tee "$RESULTS/bench-api.txt"

step "summary"
cat "$RESULTS/bench.txt" "$RESULTS/bench-api.txt" "$RESULTS/training.txt" 2>/dev/null || true
grep -E "passed|failed|error|skipped" "$RESULTS/gpu-tests.log" | tail -1 || true
echo "done in ${SECONDS}s; logs in $RESULTS"
