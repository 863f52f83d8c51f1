#!/usr/bin/env bash
# Issue 13's GPU check in one command, bounded to under 8 minutes (each part has its own timeout; not yet run
# anywhere): the CUDA-graph tests, then the decode step at n = 16384, batch 32, bfloat16, greedy and 4 beams,
# srsum's srformer (s = 64) as a captured CUDA graph and through torch.compile against Hugging Face generate,
# for T5 (t5-small shapes) and BART (bart-base shapes), and whether BART's step was captured (a capture that
# fails or disagrees makes srsum warn "decoding eagerly"). Run from the repository root on the GPU machine;
# logs and JSON go to $OUT; a summary is printed last.
#
#   benchmarks/gpu_check.sh                 # OUT defaults to ./gpu-out
#
# The lent machines may have an older transformers; put the wheel srsum is tested with in .whl/ first:
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
START=$(date +%s)
if ls .whl/transformers-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
timeout 30 python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
transformers.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee "$OUT/versions.log"
# 1. the CUDA-graph tests (graph and compiled step, T5 and BART, greedy and beams, against generate)
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_decoding.py -k "cuda_graph" 2>&1 | tail -8 \
    > "$OUT/cuda_tests.log"
# 2. the step at the floor: graph (captured per decoding, timed) and compiled (compiled once per (model,
#    beams), ~30-60 s, untimed); every cell decodes once untimed first. 128 new tokens, G = 128.
COMMON="--device cuda --dtype bfloat16 --n 16384 --batch 32 --beams 1,4 --systems peer,srformer --seg-size 64
        --step graph,compiled --no-encoder"
timeout 170 python3 benchmarks/decode.py --models t5-small $COMMON --json "$OUT/decode_gpu_t5-small.json" \
    > "$OUT/decode_gpu_t5-small.log" 2>&1
timeout 170 python3 benchmarks/decode.py --models bart-base $COMMON --json "$OUT/decode_gpu_bart-base.json" \
    > "$OUT/decode_gpu_bart-base.log" 2>&1
# 3. summary
echo
echo "== summary ($(( $(date +%s) - START )) s) =="
cat "$OUT/versions.log"
echo "-- CUDA-graph tests:"; tail -1 "$OUT/cuda_tests.log"
for model in t5-small bart-base; do
    log="$OUT/decode_gpu_$model.log"
    echo "-- $model, n 16384, batch 32, bf16 (ms/step: steady step; decode ms/token: with state building):"
    grep '^|' "$log" | grep -v "encoder ms\|^| t5-small | 16384 |$" | head -12 || echo "   no table (timed out?)"
    fallbacks=$(grep -c "decoding eagerly" "$log")
    echo "   steps that fell back to eager: $fallbacks"; grep -m3 "decoding eagerly" "$log" | sed 's/^/   /'
    grep -m3 '"error"' "$log" | grep -v '"error": null' | sed 's/^/   /'
done
grep -q "decoding eagerly" "$OUT/decode_gpu_bart-base.log" && echo "BART graph capture: FAILED (see above)" \
    || { grep -q "srformer.*graph" "$OUT/decode_gpu_bart-base.log" && echo "BART graph capture: ok" \
         || echo "BART graph capture: not measured"; }
