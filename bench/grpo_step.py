"""One GRPO step of a tiny Qwen2 on the CPU (docs/bench.md): workloads W and T.

    python bench/grpo_step.py [--workload W] [--steps 10] [--warmup 2]
    python bench/grpo_step.py --workload T [--steps 3] [--warmup 2]

Runs the real trainer (rlx.train.rl.train_rl) on a random Qwen2 (vocab 4096,
hidden 256, 4 layers) saved with transformers and loaded through rlx's HF
loader; reward = len(text) % 7, k3 KL (beta 0.04), AdamW lr 1e-6, clipping 1.0.

W: 8 prompts of 32 tokens x 8 completions of exactly 64 tokens (EOS ignored).
T (long tail): 4 prompts of 32 tokens x 4 completions, max_new_tokens 1024,
completions that stop early with a long-tailed length distribution (see
`build_checkpoint`); the same run once padded (train.length_buckets=(1024,),
sampling.tail_rows=0: the layout before trimming), once trimmed to length
buckets, once trimmed and packed (both with sampling.tail_rows=--tail_rows, 4).

One JSON line per run (T: one per layout): median step time after warm-up and
its split, first-step (compile) time, peak RSS, the host's fp32 matmul rate
(bench/host.py; measured before and after the run, the higher one) and the share of it the step achieves on the useful model
FLOPs (real tokens only: sampling forward, reference forward, update forward
and backward). Compilation inside timed steps (a length bucket seen first) is
reported and subtracted in `step_s_median_excl_compile`.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import matmul_gflops, model_flops, utilization  # noqa: E402

VOCAB = 4096
CLASSES_MEAN_LEN = (16, 48, 128, 320)  # T: mean completion length of each prompt class


def build_checkpoint(path: str, tok_path: str, long_tail: bool = False) -> None:
  """W: a random Qwen2 (tied embeddings). T (`long_tail`): the same shape with
  an untied head, edited so that lengths follow a known long-tailed law.

  T's construction: every token v >= 2 has a class k = v % 4; embedding
  columns 0..3 hold one-hot(k), which no layer changes (those rows of every
  o_proj and down_proj are zero), so the final hidden state carries the class
  of the current token. The head adds +8 to the logits of same-class tokens
  (a completion keeps its prompt's last-token class: switching has p ~ 1e-3
  per token) and gives EOS a class-dependent logit, so a class-k completion
  stops with probability 1 / CLASSES_MEAN_LEN[k] per token: geometric lengths
  per class, a mixture over prompts (prompt classes uniform): median ~ 55,
  mean ~ 125, ~1% truncated at 1024.
  """
  import numpy as np
  import torch
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

  words = {"<pad>": 0, "<eos>": 1}
  for i in range(2, VOCAB):
    words[f"w{i}"] = i
  tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
  tok.save_pretrained(tok_path)  # its own dir: AutoTokenizer keeps this class
  cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024,
                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=2048 if long_tail else 512,
                    tie_word_embeddings=not long_tail,
                    pad_token_id=0, eos_token_id=1, bos_token_id=1)
  torch.manual_seed(0)
  model = Qwen2ForCausalLM(cfg).to(torch.float32)
  if long_tail:
    k = len(CLASSES_MEAN_LEN)
    cls = torch.arange(VOCAB) % k
    onehot = torch.nn.functional.one_hot(cls, k).float()
    onehot[:2] = 0  # pad and EOS have no class
    with torch.no_grad():
      model.model.embed_tokens.weight[:, :k] = onehot
      for layer in model.model.layers:
        layer.self_attn.o_proj.weight[:k] = 0
        layer.mlp.down_proj.weight[:k] = 0
      ids = torch.randint(2, VOCAB, (4, 64))
      h = model.model(input_ids=ids).last_hidden_state  # [B, T, D]
      scale = float(h[..., :k].max(-1).values.mean())  # the class column's value
      head = model.lm_head.weight
      head[:, :k] = 8.0 * onehot / scale
      # p(EOS) = e^L / (V/k * e^8): L = 8 + log(V / k / mean length)
      eos = [8.0 + float(np.log(VOCAB / k / m)) for m in CLASSES_MEAN_LEN]
      head[1, :k] = torch.tensor(eos) / scale
      head[0] = 0
      head[0, :k] = -20.0 / scale  # pad is never sampled
  model.save_pretrained(path)


def _compile_seconds():
  """A running total of XLA compile seconds (jax.monitoring), read per step."""
  import jax
  total = [0.0]

  def listen(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      total[0] += duration
  jax.monitoring.register_event_duration_secs_listener(listen)
  return total


def run_layout(args, c, wd: str, compile_total, num_params: int, gflops: float,
               **extra) -> dict:
  """Runs train_rl with config `c`; one JSON-ready dict of medians after warm-up."""
  import jax
  import numpy as np
  from rlx.train import rl
  from rlx.train.metrics import read_jsonl

  last = [compile_total[0]]
  step_metrics = rl.step_metrics

  def timed_metrics(*a, **k):  # the compile seconds of each step, beside its metrics
    m = step_metrics(*a, **k)
    m["time/compile_s"], last[0] = compile_total[0] - last[0], compile_total[0]
    return m
  rl.step_metrics = timed_metrics
  t0 = time.time()
  try:
    rl.train_rl(c, wd)
  finally:
    rl.step_metrics = step_metrics
  total = time.time() - t0
  rows = read_jsonl(os.path.join(wd, "metrics.jsonl"))
  timed = rows[args.warmup:]
  med = lambda k: float(np.median([r[k] for r in timed]))
  n = c.train.batch_prompts * c.sampling.group_size
  p = c.data.max_prompt_len
  # Useful FLOPs of a median step: real tokens only (prompts p, completions of the mean
  # length); with train.share_prompts each group's prompt counts once in the
  # reference and update passes.
  length = med("completion/length_mean")
  seq = p + length
  prompt_rows = n // c.sampling.group_size if c.train.share_prompts else n
  train_tokens = int(n * length + prompt_rows * p)
  flops = (model_flops(num_params, int(n * length), layers=4, width=256, context=int(seq))
           + model_flops(num_params, train_tokens, layers=4, width=256, context=int(seq))
           + model_flops(num_params, train_tokens, backward=True, layers=4, width=256,
                         context=int(seq)))
  excl = float(np.median([r["time/step_s"] - r["time/compile_s"] for r in timed]))
  # On a shared host the matmul rate drifts: measured before and after the run, the higher used.
  gflops_after = round(matmul_gflops(), 1)
  out = {
      "bench": "grpo_step", **extra, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "steps_timed": len(timed),
      "step_s_median": med("time/step_s"), "step_s_median_excl_compile": excl,
      "compile_s_in_timed_steps": float(sum(r["time/compile_s"] for r in timed)),
      "sample_s_median": med("time/sample_s"), "score_s_median": med("time/score_s"),
      "update_s_median": med("time/update_s"),
      "first_step_s_incl_compile": rows[0]["time/step_s"],
      "sample_tokens_per_s_median": med("throughput/tokens_per_s"),
      "completion_length_mean": length, "completion_length_max_median":
          med("completion/length_max"), "truncated_mean": med("completion/truncated"),
      "useful_gflop_per_step": round(flops / 1e9, 1),
      "matmul_fp32_gflops": max(gflops, gflops_after),
      "matmul_fp32_gflops_before_after": [gflops, gflops_after],
      "matmul_utilization": round(utilization(flops, excl, max(gflops, gflops_after)), 3),
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      "wall_s": total,
  }
  return out


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workload", choices=("W", "T"), default="W")
  ap.add_argument("--steps", type=int, default=None, help="timed steps (W: 10, T: 3)")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--layouts", default="padded,trimmed,packed", help="T: which runs")
  ap.add_argument("--tail_rows", type=int, default=4,
                  help="T: config.sampling.tail_rows of the trimmed and packed runs (the "
                       "padded run, the layout before trimming, keeps 0)")
  ap.add_argument("--share_prompts", type=int, default=1,
                  help="config.train.share_prompts (W: each group's prompt runs once)")
  args = ap.parse_args()
  long_tail = args.workload == "T"
  if args.steps is None:
    args.steps = 3 if long_tail else 10

  import numpy as np
  from rlx.rewards.registry import REWARD_FNS
  from rlx.train.config import base_config

  @REWARD_FNS.register("bench/len_mod_7", overwrite=True)
  def len_mod_7(prompts, completions, **_):
    return [float(len(c) % 7) for c in completions]

  tmp = tempfile.mkdtemp(prefix="rlx_bench_")
  ckpt = os.path.join(tmp, "qwen2")
  # Built in a child process so that torch's memory does not count in our peak RSS.
  import subprocess
  subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                  "import grpo_step; grpo_step.build_checkpoint(sys.argv[2], sys.argv[3], "
                  "sys.argv[4] == 'T')",
                  os.path.dirname(os.path.abspath(__file__)), ckpt,
                  os.path.join(tmp, "tokenizer"), args.workload], check=True)
  rng = np.random.default_rng(0)
  data = os.path.join(tmp, "prompts.jsonl")
  with open(data, "w") as f:
    for _ in range(256):
      f.write(json.dumps({"prompt": " ".join(f"w{i}" for i in rng.integers(2, VOCAB, 32))})
              + "\n")

  c = base_config()
  c.model.init, c.model.checkpoint = "checkpoint", ckpt
  c.model.tokenizer = os.path.join(tmp, "tokenizer")
  c.data.task, c.data.path, c.data.max_prompt_len, c.data.num_eval = "file", data, 32, 8
  c.rewards = {"len_mod_7": {"fn": "bench/len_mod_7", "weight": 1.0}}
  c.sampling.group_size, c.sampling.max_new_tokens, c.sampling.ignore_eos = 8, 64, True
  c.advantage.estimator = "grpo"
  c.loss.terms = {"pg": {"clip_low": 0.2, "clip_high": 0.2}, "kl": {"coef": 0.04, "estimator": "k3"}}
  c.optim.lr, c.optim.clip_norm = 1e-6, 1.0
  # W: remat dots (matmul outputs kept, the rest recomputed), the fastest of none /
  # dots / full for W on 2 cores (docs/bench.md); T: full (long rows: least memory).
  # RLX_BENCH_REMAT picks another.
  c.model.remat = os.environ.get("RLX_BENCH_REMAT", "full" if long_tail else "dots")
  c.train.batch_prompts, c.train.steps = 8, args.warmup + args.steps
  c.train.eval_every = c.train.ckpt_every = 0
  c.train.export_hf = c.train.progress = False
  c.train.share_prompts = bool(args.share_prompts)
  c.train.keep_checkpoints = 1
  if long_tail:
    c.train.batch_prompts, c.sampling.group_size = 4, 4
    c.sampling.max_new_tokens, c.sampling.ignore_eos = 1024, False
    c.model.logprob_chunk = 128

  from rlx.models import hf_io
  from rlx.models.decoder import num_params
  n_params = num_params(hf_io.load_hf(ckpt)[2])
  gflops = round(matmul_gflops(), 1)
  compile_total = _compile_seconds()
  if not long_tail:
    out = run_layout(args, c, os.path.join(tmp, "run"), compile_total, n_params, gflops,
                     workload="W", **{"train.share_prompts": c.train.share_prompts})
    print(json.dumps(out), flush=True)
    return
  layouts = {"padded": dict(length_buckets=(1024,), prompt_buckets=(32,), packing=False),
             "trimmed": dict(length_buckets=(), prompt_buckets=(), packing=False),
             "packed": dict(length_buckets=(), prompt_buckets=(), packing=True)}
  base = None
  for name in args.layouts.split(","):
    lc = c.copy_and_resolve_references()
    lc.train.update(layouts[name])
    lc.sampling.tail_rows = 0 if name == "padded" else args.tail_rows
    out = run_layout(args, lc, os.path.join(tmp, f"run_{name}"), compile_total, n_params,
                     gflops, workload="T", layout=name,
                     **{f"train.{k}": v for k, v in layouts[name].items()},
                     **{"sampling.tail_rows": lc.sampling.tail_rows})
    if name == "padded":
      base = out["step_s_median_excl_compile"]
    elif base is not None:
      out["speedup_vs_padded"] = round(base / out["step_s_median_excl_compile"], 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  sys.exit(main())
