#!/usr/bin/env bash
# Issue 5's GPU check in one go (at most about 8 minutes on an H100/H200; not yet run anywhere): the CUDA-graph tests, then the
# decode grid at batch 32. Run from the repository root on the GPU machine; figures go to $OUT.
#
#   benchmarks/gpu_check.sh                 # OUT defaults to ./gpu-out
#
# The lent machines have an older transformers; put the wheel srsum is tested with in .whl/ first:
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/transformers-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
torch.cuda.get_device_name(0))" | tee "$OUT/versions.log"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_decoding.py -k "cuda_graph" 2>&1 | tail -5 \
    | tee "$OUT/cuda_tests.log"
# graph: captured per decoding (timed); compiled: each (system, beams) pair compiles once, ~30-60 s, untimed
timeout 200 python3 benchmarks/decode.py --device cuda --dtype bfloat16 --models t5-small --n 1024,16384 \
    --batch 32 --beams 1,4 --systems peer,srformer --step eager,graph,compiled \
    --json "$OUT/decode_gpu_t5-small.json" 2>&1 | tee "$OUT/decode_gpu_t5-small.log" | tail -14
timeout 150 python3 benchmarks/decode.py --device cuda --dtype bfloat16 --models bart-base --n 16384 \
    --batch 32 --beams 1,4 --systems peer,srformer --step graph \
    --json "$OUT/decode_gpu_bart-base.json" 2>&1 | tee "$OUT/decode_gpu_bart-base.log" | tail -10
