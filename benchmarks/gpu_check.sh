#!/usr/bin/env bash
# The GPU check, run in one go on a lent GPU machine (docs/engines.md, "Testing on a GPU"):
# what the machine holds (nvidia-smi, torch, transformers), then every test marked `gpu`, which
# runs on CUDA there; all of it is also written to $OUT/gpu_tests.log when $OUT is set.
# Python is the machine's /opt/torch/.venv (the repository is not installed there: PYTHONPATH
# points at it, after whatever PYTHONPATH already holds, e.g. /tmp/site for wheels taken along).
# Dry run on a CPU: PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh (the tests run on the
# CPU or skip). Extra arguments go to pytest. Exits with pytest's status.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-/opt/torch/.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log="${OUT:+$OUT/gpu_tests.log}"
{
    nvidia-smi || echo "nvidia-smi: not available"
    "$PYTHON" - <<'EOF'
import torch, transformers
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available:", cuda,
      "|", torch.cuda.get_device_name(0) if cuda else "no GPU")
print("transformers", transformers.__version__)
EOF
    start=$SECONDS
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider "$@"
    status=$?
    echo "pytest -m gpu: exit $status after $((SECONDS - start)) s"
    exit $status
} 2>&1 | tee ${log:+"$log"}
exit "${PIPESTATUS[0]}"
