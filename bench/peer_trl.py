"""Peer benchmark: workload W (docs/bench.md) run by TRL's GRPOTrainer on the CPU.

Measures the wall time of one TRL GRPO optimizer step (a TrainerCallback's
on_step_begin -> on_step_end: generation, rewards, reference forward, policy
forward + backward, AdamW), its median after warm-up, the part spent in
`model.generate` (TRL's own profiling context, captured here), the rollout
part (`_generate_and_score_completions`: generate + reward + reference
log-probs) and the rest (update), the step's process CPU seconds (a shared
host slows wall time more than CPU time), peak RSS of the process, versions, and the
host's fp32 matmul GFLOP/s measured with torch (2048-cube, median of 5, 2
threads; before and after the run, the higher one). Prints one JSON line.

Workload W as TRL settings: a random Qwen2 from `Qwen2Config` (vocab 4096,
hidden 256, intermediate 1024, 4 layers, 4 heads, 2 KV heads, max positions
512, tied embeddings, float32, torch seed 0) saved to a temp dir so that TRL
builds the frozen reference from it; a local WordLevel tokenizer ("w3" ->
id 3, ...; no downloads); prompts of 32 random ids >= 3 written as text that
maps back to exactly 32 tokens (checked); num_generations 8,
per_device_train_batch_size 64, gradient_accumulation_steps 1 (8 prompts x 8
= 64 completions, one generation batch per optimizer step, one minibatch,
num_iterations 1); max_completion_length 64 with min_new_tokens 64 (EOS never
sampled: every completion is 64 tokens); temperature 1, top_k 0, top_p 1;
reward len(completion text) % 7; loss_type "grpo", beta 0.04 (TRL's KL is
k3), epsilon 0.2, AdamW lr 1e-6 constant, weight decay 0, max_grad_norm 1.0;
fp32 (bf16 off), no gradient checkpointing (--gradient-checkpointing turns it
on; rlx's bench uses remat), torch threads 2.

Its own virtual environment (rlx's stays untouched); versions used:

    python3.11 -m venv /tmp/trlvenv
    /tmp/trlvenv/bin/pip install trl==1.16.0 torch==2.13.0 transformers==5.25.0 \\
        datasets==5.2.0 accelerate==1.16.0 tokenizers==0.23.3
    nice -n 10 /tmp/trlvenv/bin/python bench/peer_trl.py [--steps 8] [--warmup 2]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  WANDB_DISABLED="true", TOKENIZERS_PARALLELISM="false")
VOCAB, PROMPT_LEN, GROUP, NEW_TOKENS, PROMPTS = 4096, 32, 8, 64, 8


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  import torch
  a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
  a @ a
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - t0)
  return round(2 * n ** 3 / sorted(times)[repeats // 2] / 1e9, 1)


def build(tmp: str):
  """The W model (saved to `tmp`, the reference is rebuilt from it) and tokenizer."""
  import torch
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

  words = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
  tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                bos_token="<bos>")
  cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024,
                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=512, tie_word_embeddings=True,
                    pad_token_id=0, eos_token_id=1, bos_token_id=2)
  torch.manual_seed(0)
  model = Qwen2ForCausalLM(cfg).to(torch.float32)
  model.save_pretrained(tmp)
  tok.save_pretrained(tmp)
  return sum(p.numel() for p in model.parameters()), tok


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=8, help="timed steps")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--gradient-checkpointing", action="store_true")
  args = ap.parse_args()
  out_stream, sys.stdout = sys.stdout, sys.stderr  # TRL / Trainer prints go to stderr

  import numpy as np
  import torch
  torch.set_num_threads(2)
  import datasets
  import transformers
  import trl
  from trl.extras import profiling
  from transformers import TrainerCallback
  from trl import GRPOConfig, GRPOTrainer
  transformers.logging.set_verbosity_error()
  datasets.disable_progress_bars()

  gflops = matmul_gflops()
  tmp = tempfile.mkdtemp(prefix="peer_trl_")
  n_params, tok = build(os.path.join(tmp, "model"))
  rng = np.random.default_rng(0)
  total = args.warmup + args.steps
  prompts = [" ".join(f"w{i}" for i in rng.integers(3, VOCAB, PROMPT_LEN))
             for _ in range(PROMPTS * total)]
  assert all(len(ids) == PROMPT_LEN for ids in tok(prompts)["input_ids"])

  # Timings: TRL's profiling contexts (only sent to wandb/mlflow) are kept here.
  spans: list[tuple[str, float]] = []
  log_metrics = profiling.ProfilingContext._log_metrics
  profiling.ProfilingContext._log_metrics = lambda self, d: (spans.append((self.name, d)),
                                                             log_metrics(self, d))[1]
  steps: list[dict] = []

  class Timer(TrainerCallback):
    def on_step_begin(self, *a, **k):
      spans.clear()
      self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_step_end(self, *a, **k):
      s, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
      gen = sum(d for n, d in spans if n.endswith(".generate"))
      roll = sum(d for n, d in spans if n.endswith("rollout"))
      steps.append({"step_s": s, "generate_s": gen, "rollout_s": roll, "update_s": s - roll,
                    "cpu_s": cpu})

  def len_mod_7(prompts, completions, **_):
    return [float(len(c) % 7) for c in completions]

  config = GRPOConfig(
      output_dir=os.path.join(tmp, "out"), use_cpu=True, bf16=False, fp16=False,
      model_init_kwargs={"dtype": torch.float32}, max_steps=total,
      per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
      num_generations=GROUP, num_iterations=1, max_completion_length=NEW_TOKENS,
      generation_kwargs={"min_new_tokens": NEW_TOKENS}, temperature=1.0, top_k=0, top_p=1.0,
      loss_type="grpo", beta=0.04, epsilon=0.2, learning_rate=1e-6,
      lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
      gradient_checkpointing=args.gradient_checkpointing, logging_steps=1, report_to="none",
      save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
  trainer = GRPOTrainer(model=os.path.join(tmp, "model"), reward_funcs=len_mod_7, args=config,
                        train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                        processing_class=tok, callbacks=[Timer()])
  rollout = trainer._generate_and_score_completions

  def timed_rollout(*a, **k):
    with profiling.profiling_context(trainer, "rollout"):
      return rollout(*a, **k)
  trainer._generate_and_score_completions = timed_rollout
  t0 = time.time()
  trainer.train()
  wall = time.time() - t0
  logs = [h for h in trainer.state.log_history if "step_time" in h]
  gflops_after = matmul_gflops()

  timed = steps[args.warmup:]
  med = lambda k: round(float(np.median([s[k] for s in timed])), 3)
  lengths = [h.get("completions/mean_length") for h in logs]
  res = {
      "bench": "peer_trl", "workload": "W", "impl": "trl.GRPOTrainer",
      "steps_timed": len(timed), "warmup": args.warmup,
      "step_s_median": med("step_s"), "generate_s_median": med("generate_s"),
      "rollout_s_median": med("rollout_s"), "update_s_median": med("update_s"),
      "step_cpu_s_median": med("cpu_s"),  # process CPU seconds, all threads
      "step_s_all": [round(s["step_s"], 3) for s in steps],
      "trl_step_time_median": round(float(np.median([h["step_time"] for h in
                                                     logs[args.warmup:]])), 3) if logs else None,
      "sample_tokens_per_s_median": round(PROMPTS * GROUP * NEW_TOKENS / med("generate_s"), 1),
      "completion_length_mean": float(np.mean([x for x in lengths if x is not None]))
      if any(x is not None for x in lengths) else None,
      "n_params": n_params, "gradient_checkpointing": args.gradient_checkpointing,
      "torch_threads": torch.get_num_threads(),
      "matmul_fp32_gflops": max(gflops, gflops_after),
      "matmul_fp32_gflops_before_after": [gflops, gflops_after],
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
      "wall_s": round(wall, 1),
      "torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
  }
  print(json.dumps(res), file=out_stream, flush=True)


if __name__ == "__main__":
  main()
