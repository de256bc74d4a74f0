#!/usr/bin/env bash
# Check rmt's optional GPU fast paths (rmt/kernels.py) on a machine with an NVIDIA GPU.
#
#   bash benchmarks/gpu_kernels_check.sh            # from the repository root, in an env with CUDA PyTorch
#
# 1. installs the optional `gpu` extra (mamba-ssm, triton, einops) unless SKIP_INSTALL=1 — mamba-ssm builds or
#    downloads CUDA extensions that must match the installed torch, hence --no-build-isolation; with no internet,
#    point PIP_FIND_LINKS / PIP_NO_INDEX at a folder of prepared wheels;
# 2. fails at once if mamba-ssm's SSD kernel does not import (no silent fallback);
# 3. runs tests/test_kernels.py and fails if any GPU test was skipped: a skipped check is not a passed check;
# 4. times one SelectiveSSM forward+backward with the kernel and with the reference, same GPU, same process
#    (informational; the README quotes no GPU speedup until this has been run).
set -euo pipefail
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."

"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if ok else None); sys.exit(0 if ok else 1)" \
  || { echo "no CUDA device visible to PyTorch: nothing to check here" >&2; exit 1; }

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  "$PY" -m pip install -q -e . pytest
  "$PY" -m pip install -q triton einops packaging ninja
  "$PY" -m pip install -q --no-build-isolation "mamba-ssm>=2.2"
fi

"$PY" -c "from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined; import mamba_ssm, triton; print('mamba_ssm', mamba_ssm.__version__, 'triton', triton.__version__)"

log=$(mktemp)
set +e  # keep going after a test failure long enough to read pytest's status and the skip list
RMT_KERNELS=auto "$PY" -m pytest tests/test_kernels.py tests/test_scan.py -q -rs 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -q "SKIPPED" "$log"; then
  echo "FAIL: some kernel tests were skipped on a GPU machine (see above)" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"

"$PY" - <<'PYEOF'
import os, time, torch
from rmt.model.ssm import SelectiveSSM

torch.manual_seed(0)
layer = SelectiveSSM(512, head_dim=64, d_state=64, conv_width=4, chunk=64).cuda()
u = torch.randn(8, 4096, 512, device="cuda", requires_grad=True)
for mode in ("on", "off", "on", "off"):
    os.environ["RMT_KERNELS"] = mode
    for _ in range(2):  # warm-up (Triton autotuning and compilation happen on the first calls)
        layer(u).square().mean().backward()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(10):
        layer(u).square().mean().backward()
    torch.cuda.synchronize()
    print(f"SelectiveSSM d=512, 8 x 4096 tokens, fwd+bwd, RMT_KERNELS={mode}: {(time.perf_counter() - t0) / 10 * 1e3:.2f} ms")
PYEOF
echo "GPU kernel check passed"
