#!/usr/bin/env bash
# SFT warm start + GDPO on BFCL with SmolLM2-135M-Instruct, the CPU budget of the
# README's "Real models" numbers (2 shared cores). Resumable: run it again after a stop.
#   bash experiments/run_real_warmstart.sh [more run_real_cell.py flags, e.g. --estimators gdpo grpo dr_grpo]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f runs/smollm2/config.json ] || python -m rlx.convert --smollm2 --out runs/smollm2
python experiments/run_real_cell.py --model runs/smollm2 --estimators gdpo --seeds 0 \
    --sft_steps 10 --sft_batch 4 --sft_lr 1e-4 --steps 6 \
    --arg categories=simple_python prompt_len=320 new_tokens=96 prompts=2 group=4 \
          num_eval=32 eval_every=3 lr=1e-5 "$@"
