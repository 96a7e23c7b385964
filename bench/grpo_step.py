"""Workload W of docs/bench.md: one GRPO step of a tiny Qwen2 on the CPU.

    python bench/grpo_step.py [--steps 10] [--warmup 2]

Runs the real trainer (rlx.train.rl.train_rl) on a random Qwen2 (vocab 4096,
hidden 256, 4 layers, 4.98M params) saved with transformers and loaded through
rlx's HF loader: 8 prompts of 32 tokens x 8 completions of 64 tokens, reward =
len(text) % 7, k3 KL (beta 0.04), AdamW lr 1e-6, clipping 1.0. Prints one JSON
line: median step time after warm-up and its split, compile (first-step) time
and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")


def build_checkpoint(path: str, tok_path: str, vocab: int = 4096) -> None:
  import torch
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

  words = {"<pad>": 0, "<eos>": 1}
  for i in range(2, vocab):
    words[f"w{i}"] = i
  tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
  tok.save_pretrained(tok_path)  # its own dir: AutoTokenizer keeps this class
  cfg = Qwen2Config(vocab_size=vocab, hidden_size=256, intermediate_size=1024,
                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=512, tie_word_embeddings=True,
                    pad_token_id=0, eos_token_id=1, bos_token_id=1)
  torch.manual_seed(0)
  Qwen2ForCausalLM(cfg).to(torch.float32).save_pretrained(path)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  args = ap.parse_args()

  import numpy as np
  from rlx.rewards.registry import REWARD_FNS
  from rlx.train.config import base_config
  from rlx.train.metrics import read_jsonl
  from rlx.train.rl import train_rl

  @REWARD_FNS.register("bench/len_mod_7", overwrite=True)
  def len_mod_7(prompts, completions, **_):
    return [float(len(c) % 7) for c in completions]

  tmp = tempfile.mkdtemp(prefix="rlx_bench_")
  ckpt = os.path.join(tmp, "qwen2")
  # Built in a child process so that torch's memory does not count in our peak RSS.
  import subprocess
  subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                  "import grpo_step; grpo_step.build_checkpoint(sys.argv[2], sys.argv[3])",
                  os.path.dirname(os.path.abspath(__file__)), ckpt, os.path.join(tmp, "tokenizer")],
                 check=True)
  rng = np.random.default_rng(0)
  data = os.path.join(tmp, "prompts.jsonl")
  with open(data, "w") as f:
    for _ in range(256):
      f.write(json.dumps({"prompt": " ".join(f"w{i}" for i in rng.integers(2, 4096, 32))}) + "\n")

  c = base_config()
  c.model.init, c.model.checkpoint = "checkpoint", ckpt
  c.model.tokenizer = os.path.join(tmp, "tokenizer")
  c.data.task, c.data.path, c.data.max_prompt_len, c.data.num_eval = "file", data, 32, 8
  c.rewards = {"len_mod_7": {"fn": "bench/len_mod_7", "weight": 1.0}}
  c.sampling.group_size, c.sampling.max_new_tokens, c.sampling.ignore_eos = 8, 64, True
  c.advantage.estimator = "grpo"
  c.loss.terms = {"pg": {"clip_low": 0.2, "clip_high": 0.2}, "kl": {"coef": 0.04, "estimator": "k3"}}
  c.optim.lr, c.optim.clip_norm = 1e-6, 1.0
  c.model.logprob_chunk = 32
  c.model.remat = os.environ.get("RLX_BENCH_REMAT", "full")
  c.train.batch_prompts, c.train.steps = 8, args.warmup + args.steps
  c.train.eval_every = c.train.ckpt_every = 0
  c.train.export_hf = c.train.progress = False
  c.train.keep_checkpoints = 1
  wd = os.path.join(tmp, "run")
  t0 = time.time()
  train_rl(c, wd)
  total = time.time() - t0
  rows = read_jsonl(os.path.join(wd, "metrics.jsonl"))
  timed = rows[args.warmup:]
  med = lambda k: float(np.median([r[k] for r in timed]))
  import jax
  out = {
      "bench": "grpo_step", "workload": "W", "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "steps_timed": len(timed),
      "step_s_median": med("time/step_s"), "sample_s_median": med("time/sample_s"),
      "score_s_median": med("time/score_s"), "update_s_median": med("time/update_s"),
      "first_step_s_incl_compile": rows[0]["time/step_s"],
      "sample_tokens_per_s_median": med("throughput/tokens_per_s"),
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      "wall_s": total,
  }
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
