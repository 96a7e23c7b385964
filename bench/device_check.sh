#!/bin/bash
# One GPU session's checks, as one script (the lent GPU machines have no internet):
#   1. correctness on the GPU: model parity with transformers and the sampler's
#      tests (greedy = HF generate, log-probs, chi-square), fp32 matmuls at full
#      precision (no TF32);
#   2. workload G of docs/bench.md: bench/sampler.py --workload G (one JSON line);
#   3. the experiments' GPU cell (experiments/README.md): the same run_cell.py
#      command with --scale gpu, stopped after GPU_CELL_S seconds (default 420;
#      0 skips it). A stopped cell saves a checkpoint, is marked "stopped", and
#      the same command resumes it.
#
#   bash bench/device_check.sh [WHEEL_DIR]
#
# WHEEL_DIR: wheels of what the machine lacks (grain, ml-collections), installed
# with --no-index. Writes $OUT/device_check.log and $OUT/sampler_G.json when $OUT
# is set, and the GPU cell's cell.json, metrics.jsonl, rewards.png and its
# results table to $OUT/gpu_cell/. Exit status: non-zero if the tests or the
# benchmark failed (the cell's status is in its cell.json and the log).
set -u -o pipefail
out="${OUT:-/tmp/rlx_device_check}"
mkdir -p "$out"
log="$out/device_check.log"
if [ $# -ge 1 ]; then
  pip install -q --no-index --find-links "$1" grain ml-collections hypothesis pytest 2>&1 | tail -3
fi
pip install -q --no-deps -e . 2>&1 | tail -3
python -c "import jax; print('devices:', jax.devices())" | tee "$log"
JAX_DEFAULT_MATMUL_PRECISION=highest python -m pytest -q -x -p no:cacheprovider \
  tests/test_models.py tests/test_sampler.py 2>&1 | tail -15 | tee -a "$log"
tests_rc=$?
# Without a GPU (a dry run of this script), the tiny G-shaped smoke workload.
extra=$(python -c "import jax; print('' if jax.default_backend() == 'gpu' else '--smoke --hbm_tb_s 1')")
python bench/sampler.py --workload G --repeats 3 $extra 2>&1 | tail -1 | tee "$out/sampler_G.json"
bench_rc=$?
cell_rc=skipped
if [ "${GPU_CELL_S:-420}" != 0 ]; then
  runs=/tmp/rlx_gpu_runs
  # Without a GPU, a 2-step smoke run of the same command.
  cell_extra=$(python -c "import jax; print('' if jax.default_backend() == 'gpu' else '--steps 2 --sft_steps 5')")
  timeout -s TERM "${GPU_CELL_S:-420}" python experiments/run_cell.py --task arith \
    --variant conditioned --estimator gdpo --seed 0 --scale gpu --out "$runs" $cell_extra \
    2>&1 | grep -v " INFO " | tail -5 | tee -a "$log"
  cell_rc=$?
  python experiments/summarize.py --runs "$runs" --results "$out/gpu_cell" 2>&1 | tail -3
  cp "$runs"/arith_conditioned_gpu/gdpo_s0/{cell.json,metrics.jsonl,rewards.png} \
    "$out/gpu_cell/" 2>/dev/null
fi
echo "tests rc=$tests_rc bench rc=$bench_rc gpu cell rc=$cell_rc" | tee -a "$log"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
