#!/usr/bin/env bash
# Everything a session lent a GPU should run, prepared as one command (at most 9 minutes: the
# tests get 240 s, the benchmarks 300 s; the device tool's `run` allows 10). From the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# 1. the test files that hold CUDA tests (sync-free steps under set_sync_debug_mode("error"),
#    bf16/fp16 casts, CUDA graphs, tf32, the device resize against Pillow, ...), which skip on
#    machines without CUDA (about 30 s on a 2-core CPU; CI runs the rest of the suite there);
# 2. every benchmark on CUDA (python benchmarks/run_all.py --device cuda), which writes
#    benchmarks/results/gpu_*.{md,json} for the repository.
# Uses the machine's own python3 (torch with CUDA, transformers, pytest, hypothesis) and this
# checkout's src/ without installing it. Logs and a tarball of the gpu_* results go to $OUT when
# it is set (the device tool brings them back), else to /tmp/gpu_check.
set -uo pipefail
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, PIL; assert torch.cuda.is_available(), 'no CUDA GPU'; print('torch', torch.__version__, '| transformers', transformers.__version__, '| Pillow', PIL.__version__, '|', torch.cuda.get_device_name())" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

cuda_tests=$(grep -l "cuda.is_available\|needs a CUDA\|device_count" tests/test_*.py)
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider $cuda_tests 2>&1 | tee "$out/tests.log" | tail -40
tests=${PIPESTATUS[0]}
timeout 300 python3 benchmarks/run_all.py --device cuda 2>&1 | tee "$out/benchmarks.log" | tail -40
bench=${PIPESTATUS[0]}
tar czf "$out/gpu_results.tgz" benchmarks/results/gpu_* 2>/dev/null
echo "tests exit $tests, benchmarks exit $bench (124: ran out of its time); logs and gpu_results.tgz in $out"
exit $(( tests != 0 || bench != 0 ))
