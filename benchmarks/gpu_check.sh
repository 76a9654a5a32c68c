#!/usr/bin/env bash
# The CUDA checks in one command, for a bare Linux machine with an NVIDIA GPU and a Python that
# holds torch (Pyro, ArviZ and mlxtend may be missing: --wheels installs them offline).
#
#   bash benchmarks/gpu_check.sh --wheels .whl --data-dir .gpu_data --out gpu_results
#   bash benchmarks/gpu_check.sh --device cpu --quick --out /tmp/dry     # the dry run, on a CPU
#   ... --steps env,cuda_tests                                             # only these steps
#
# Steps (each with its own time limit; a failing step is recorded and the others still run):
#   env           torch, CUDA, the device's name, the package versions         -> env.json
#   cuda_tests    tests/test_cuda.py on the device (compiled steps accepted)   -> cuda_tests.xml, cuda_tests.log
#   train_speed   the training-speed rows (VAE elbo b100, 2-layer IWAE k=50 b100, full MNIST b100)
#                 against the hand-written loop and plain Pyro, in one run     -> train_speed.json
#   log_px        log p(x), K = 5,000 over the 10,000 MNIST test images        -> log_px_speed.json
#   burda_pass    one pass of Burda et al.'s two-layer IWAE k=50 cell, scored  -> burda_pass.json
#   iwae_push     (only when named in --steps) the 1-layer IWAE k=50 cell trained for --push-minutes
#                 (default 6), scored where it stopped (K = 1,000, first 2,000 test images, as the
#                 CPU tables of issue 26), with its checkpoint: a later push continues it -> iwae_push.json
# and summary.json (each step's status and seconds). --data-dir must hold mnist.npz for the last
# three at full size (without it they run on mnist5k); --quick shrinks every step to seconds.
set -uo pipefail

WHEELS="" DATA_DIR="" OUT="gpu_results" DEVICE="cuda" QUICK=0 STEPS="env,cuda_tests,train_speed,log_px,burda_pass" PUSH_MINUTES=6
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --data-dir) DATA_DIR="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --steps) STEPS="$2"; shift 2 ;;
        --push-minutes) PUSH_MINUTES="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-python3}"
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
export PYTHONUNBUFFERED=1

if [ -n "$WHEELS" ]; then  # offline: no index, no dependencies resolved beyond the folder
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ppl_vae_site "$WHEELS"/*.whl \
        || { echo "gpu_check.sh: installing the wheels in $WHEELS failed" >&2; exit 2; }
    export PYTHONPATH="/tmp/ppl_vae_site${PYTHONPATH:+:$PYTHONPATH}"
fi

# the package as pip installs it (ppl_vae.models and ppl_vae.guides inside ppl_vae), with its tests
SRC="$(mktemp -d)"
cp -r "$REPO/ppl_vae" "$SRC/ppl_vae" && cp -r "$REPO/models" "$SRC/ppl_vae/models" && cp -r "$REPO/guides" "$SRC/ppl_vae/guides"
cp -r "$REPO/tests" "$REPO/benchmarks" "$REPO/pyproject.toml" "$SRC/"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
cd "$SRC" || exit 2

STATUS="$OUT/summary.jsonl"
: > "$STATUS"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, and record status and seconds
    local name="$1" limit="$2"; shift 2
    case ",$STEPS," in *",$name,"*) ;; *) return 0 ;; esac
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local code=$?
    tail -n 25 "$OUT/$name.log"
    echo "{\"step\": \"$name\", \"exit\": $code, \"seconds\": $((SECONDS - start))}" >> "$STATUS"
    echo "== $name: exit $code after $((SECONDS - start)) s"
}

if [ -n "$DATA_DIR" ] && [ -f "$DATA_DIR/mnist.npz" ]; then DATA=(--data-dir "$(cd "$DATA_DIR" && pwd)"); else DATA=(); fi
if [ "$QUICK" = 1 ]; then
    SPEED=(--cases vae100 --epochs 2 --rounds 1 --n 200 --no-pythae)
    LOGPX=(--n 40 --k 20 --chunk-k 10 --batch 20 --rounds 1)
    BURDA=(--dataset mnist5k --passes 1 --test-k 5 --test-n 20)
    PUSH=(--dataset mnist5k --test-k 5 --test-n 20)
    TESTS=(-x -q)
else
    SPEED=(--cases vae100,2layer-iwae50${DATA:+,full100} --epochs 3 --rounds 2 --no-pythae "${DATA[@]}")
    LOGPX=(--n 10000 --k 5000 --rounds 1 "${DATA[@]}")
    BURDA=(--passes 1 "${DATA[@]}")
    PUSH=(--test-k 1000 --test-n 2000 "${DATA[@]}")
    [ ${#DATA[@]} -eq 0 ] && BURDA=(--dataset mnist5k --passes 1) && PUSH=(--dataset mnist5k --test-k 1000 --test-n 2000)
    TESTS=(-q)
fi

step env 120 "$PYTHON" - "$DEVICE" "$OUT/env.json" <<'EOF'
import json, platform, sys
import torch
device = sys.argv[1]
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "device": device}
if device.startswith("cuda"):
    info.update(name=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
for package in ("pyro", "arviz", "mlxtend", "ppl_vae"):
    try:
        info[package] = __import__(package).__version__
    except Exception as err:  # recorded, not fatal: the steps that need it will say so
        info[package] = f"missing: {err}"
json.dump(info, open(sys.argv[2], "w"), indent=2)
print(json.dumps(info, indent=2))
EOF
if [ "$DEVICE" = cpu ]; then  # the dry run: the CUDA tests skip cleanly without a GPU
    step cuda_tests 300 "$PYTHON" -m pytest tests/test_cuda.py tests/test_capture.py "${TESTS[@]}" -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml"
else
    step cuda_tests 300 env PPL_VAE_DEVICE=cuda "$PYTHON" -m pytest tests/test_cuda.py "${TESTS[@]}" -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml"
fi
step train_speed 150 "$PYTHON" benchmarks/train_speed.py --device "$DEVICE" "${SPEED[@]}" --json "$OUT/train_speed.json"
step log_px 120 "$PYTHON" benchmarks/log_px_speed.py --device "$DEVICE" "${LOGPX[@]}" --json "$OUT/log_px_speed.json"
step burda_pass 150 "$PYTHON" benchmarks/reproduce_iwae.py --cell 2L-iwae50 --device "$DEVICE" "${BURDA[@]}" --no-progress \
    --out "$OUT/iwae" --json "$OUT/burda_pass.json"
step iwae_push "$(awk -v m="$PUSH_MINUTES" 'BEGIN { printf "%d", 60 * m + 240 }')" "$PYTHON" benchmarks/reproduce_iwae.py \
    --cell 1L-iwae50 --device "$DEVICE" "${PUSH[@]}" --minutes "$PUSH_MINUTES" --score-when-stopped --no-progress \
    --out "$OUT/push" --json "$OUT/iwae_push.json"

"$PYTHON" - "$STATUS" "$OUT/summary.json" <<'EOF'
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1])]
json.dump({"steps": steps, "all_passed": all(s["exit"] == 0 for s in steps)}, open(sys.argv[2], "w"), indent=2)
print("\n".join(f"{s['step']:<12} exit {s['exit']:<4} {s['seconds']:>4} s" for s in steps))
EOF
rm -rf "$SRC"
grep -q '"exit": [^0]' "$STATUS" && exit 1 || exit 0
