"""Sampler benchmark; prints ONE JSON line.

CPU, workloads of docs/bench.md, each a random-init checkpoint written by
`transformers` (`save_pretrained`) and loaded through `rlx.models.load_hf`,
float32, temperature 1, no top-k/top-p, no early stop:
  W: a tiny Qwen2 (4.98M params); 8 prompts x 32 tokens, group 8, 64 new tokens.
  R: SmolLM2-135M-Instruct's shape (Llama, 134.5M params); 8 prompts x 40
     tokens, group 4, 128 new tokens.
Reports rlx tokens/s, compile time, peak RSS, and `transformers` generate
tokens/s on the same checkpoint (torch threads 2, do_sample, top_k 0,
min_new_tokens = max_new_tokens) measured in a child process (so the rlx
process never loads torch and its peak RSS is rlx's own), the host's fp32
matmul GFLOP/s (bench/host.py, same run) and the share of it each side's
model FLOPs achieve.

GPU (workload G): a Qwen2.5-0.5B-shaped random model in bf16 from
`rlx.models.init_model`; 32 prompts x 128 tokens, group 8 (batch 256), 512 new
tokens. Reports tokens/s, the device's fp32 matmul GFLOP/s and the fraction
of the memory-bandwidth limit:
bytes per decode step = weights + average KV cache (valid slots) read, over
--hbm_tb_s (default: 4.8 for H200, 3.35 for H100, from the device kind).

    python bench/sampler.py [--repeats 5] [--workload W|R|G] [--skip_hf]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import matmul_gflops, model_flops, utilization  # noqa: E402

W = dict(family="qwen2", vocab_size=4096, hidden_size=256, intermediate_size=1024,
         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
         max_position_embeddings=512, tie_word_embeddings=True, prompts=8, prompt_len=32,
         group=8, new_tokens=64)
R = dict(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
         tie_word_embeddings=True, prompts=8, prompt_len=40, group=4, new_tokens=128)
CPU_WORKLOADS = {"W": W, "R": R}
_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
            "rope_theta", "rms_norm_eps", "tie_word_embeddings")
G = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
         num_heads=14, num_kv_heads=2, head_dim=64, prompts=32, prompt_len=128, group=8,
         new_tokens=512)


def peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
  return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


def hf_child(ckpt: str, workload: str, repeats: int) -> None:
  """Writes the workload's checkpoint (if absent) and times transformers generate."""
  import torch
  import transformers

  wl = CPU_WORKLOADS[workload]
  torch.set_num_threads(2)
  if not os.path.exists(os.path.join(ckpt, "config.json")):
    config_cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}
    cfg = config_cls[wl["family"]](**{k: wl[k] for k in _HF_KEYS if k in wl},
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(ckpt)
  model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
  n_params = sum(p.numel() for p in model.parameters())
  g = torch.Generator().manual_seed(0)
  ids = torch.randint(3, wl["vocab_size"], (wl["prompts"], wl["prompt_len"]), generator=g)
  kw = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
            top_p=1.0, max_new_tokens=wl["new_tokens"], min_new_tokens=wl["new_tokens"],
            num_return_sequences=wl["group"], pad_token_id=0, eos_token_id=2)
  times, cpu = [], []
  with torch.no_grad():
    for i in range(repeats + 1):
      t0, c0 = time.perf_counter(), time.process_time()
      out = model.generate(ids, **kw)
      if i:
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
  new = out.shape[0] * (out.shape[1] - ids.shape[1])
  assert new == wl["prompts"] * wl["group"] * wl["new_tokens"], out.shape
  print(json.dumps(dict(hf_s=statistics.median(times), hf_tokens_per_s=new / statistics.median(times),
                        hf_s_all=[round(t, 4) for t in times], hf_cpu_s=statistics.median(cpu),
                        hf_peak_rss_mb=peak_rss_mb(),
                        n_params=n_params, torch_threads=torch.get_num_threads(),
                        transformers=transformers.__version__, torch=torch.__version__)))


def time_sample(run, repeats: int):
  """(first call seconds incl. compile, median steady seconds, all steady
  seconds, median steady process CPU seconds: all threads, less sensitive
  than wall time to other load on a shared machine)."""
  import jax

  t0 = time.perf_counter()
  jax.block_until_ready(run(0))
  first = time.perf_counter() - t0
  times, cpu = [], []
  for i in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(run(i + 1))
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return first, statistics.median(times), times, statistics.median(cpu)


def workload_gflop(wl: dict, n_params: int, head_dim: int) -> float:
  """Model GFLOP of one sampling call: each prompt prefilled once, then
  N = prompts x group completions of new_tokens tokens (host.model_flops;
  tied embeddings: num_params counts the output head once, the embedding
  lookup is no matmul)."""
  b, p, n, c = wl["prompts"], wl["prompt_len"], wl["prompts"] * wl["group"], wl["new_tokens"]
  shape = dict(layers=wl["num_hidden_layers"], width=wl["num_attention_heads"] * head_dim)
  return (model_flops(n_params, b * p, context=p // 2, **shape)
          + model_flops(n_params, n * c, context=p + c // 2, **shape)) / 1e9


def bench_cpu(args, workload: str) -> dict:
  wl = CPU_WORKLOADS[workload]
  default_ckpt = {"W": "rlx_bench_w_qwen2", "R": "rlx_bench_r_smollm2_135m"}[workload]
  ckpt = args.checkpoint or os.path.join(tempfile.gettempdir(), default_ckpt)
  hf = {}
  if not args.skip_hf or not os.path.exists(os.path.join(ckpt, "config.json")):
    out = subprocess.run([sys.executable, __file__, "--_hf_child", ckpt, "--workload", workload,
                          "--hf_repeats", str(args.hf_repeats)],
                         check=True, capture_output=True, text=True)
    hf = json.loads(out.stdout.strip().splitlines()[-1])
    if args.skip_hf:
      hf = {}

  import jax
  import jax.numpy as jnp
  import numpy as np

  from rlx import models
  from rlx.sampling import SamplingSettings, sample

  gflops = matmul_gflops()
  cfg, graphdef, params = models.load_hf(ckpt)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, wl["vocab_size"], (wl["prompts"], wl["prompt_len"])),
                       jnp.int32)
  mask = jnp.ones(tokens.shape, bool)
  settings = SamplingSettings(max_new_tokens=wl["new_tokens"], group_size=wl["group"],
                              stop_token_ids=(), pad_token_id=0)
  key = jax.random.key(0)
  run = lambda i: sample(graphdef, params, tokens, mask, jax.random.fold_in(key, i), settings)
  first, med, times, cpu = time_sample(run, args.repeats)
  r = run(0)
  n_tok = int(np.asarray(r.completion_lengths).sum())
  assert n_tok == wl["prompts"] * wl["group"] * wl["new_tokens"], n_tok
  n_params = models.num_params(params)
  work = workload_gflop(wl, n_params, cfg.head_dim)
  res = dict(
      bench="sampler", workload=workload, backend=jax.default_backend(),
      rlx_tokens_per_s=n_tok / med, rlx_s=med, rlx_s_all=[round(t, 4) for t in times],
      rlx_cpu_s=cpu, compile_s=first - med, rlx_peak_rss_mb=peak_rss_mb(), n_params=n_params,
      model_gflop=work, matmul_fp32_gflops=gflops,
      rlx_matmul_utilization=utilization(work * 1e9, med, gflops),
      cpu_count=os.cpu_count(), load_avg_1m=os.getloadavg()[0], repeats=args.repeats)
  res.update(hf)
  if hf:
    res["hf_matmul_utilization"] = utilization(work * 1e9, hf["hf_s"], gflops)
    res["speedup_vs_hf"] = res["rlx_tokens_per_s"] / hf["hf_tokens_per_s"]
    res["cpu_time_ratio_hf_over_rlx"] = hf["hf_cpu_s"] / cpu
  return res


def default_hbm_tb_s(kind: str) -> float:
  kind = kind.lower()
  if "h200" in kind:
    return 4.8
  if "h100" in kind:
    return 3.35
  raise SystemExit(f"Unknown device kind {kind!r}: pass --hbm_tb_s.")


def bench_gpu(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rlx import models
  from rlx.sampling import SamplingSettings, sample

  dev = jax.devices()[0]
  hbm = args.hbm_tb_s or default_hbm_tb_s(dev.device_kind)
  gflops = matmul_gflops()
  if args.smoke:  # a tiny G-like run to check this code path anywhere
    G.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=16, prompts=2, prompt_len=8, new_tokens=16)
  cfg = models.ModelConfig.for_family(
      "qwen2", vocab_size=G["vocab_size"], hidden_size=G["hidden_size"],
      intermediate_size=G["intermediate_size"], num_layers=G["num_layers"],
      num_heads=G["num_heads"], num_kv_heads=G["num_kv_heads"], head_dim=G["head_dim"],
      tie_word_embeddings=True, max_position_embeddings=32768, param_dtype="bfloat16",
      dtype="bfloat16")
  graphdef, params = jax.jit(models.init_model, static_argnums=0)(cfg, jax.random.key(0))
  b, p, g, c = G["prompts"], G["prompt_len"], G["group"], G["new_tokens"]
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, G["vocab_size"], (b, p)), jnp.int32)
  mask = jnp.ones(tokens.shape, bool)
  settings = SamplingSettings(max_new_tokens=c, group_size=g, stop_token_ids=(), pad_token_id=0)
  key = jax.random.key(0)
  run = lambda i: sample(graphdef, params, tokens, mask, jax.random.fold_in(key, i), settings)
  first, med, times, _ = time_sample(run, args.repeats)
  n = b * g
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  kv_bytes_per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # k+v, bf16
  avg_slots = p + (c - 1) / 2  # valid slots read, averaged over decode steps
  step_bytes = weight_bytes + n * avg_slots * kv_bytes_per_slot
  limit_step_s = step_bytes / (hbm * 1e12)
  tok_s = n * c / med
  limit_tok_s = n / limit_step_s
  stats = dev.memory_stats() or {}
  return dict(
      bench="sampler", workload="G", backend=jax.default_backend(), device=dev.device_kind,
      rlx_tokens_per_s=tok_s, rlx_s=med, rlx_s_all=[round(t, 4) for t in times],
      compile_s=first - med, ms_per_decode_step=1e3 * med / c, weight_gb=weight_bytes / 1e9,
      avg_kv_read_gb=n * avg_slots * kv_bytes_per_slot / 1e9, hbm_tb_s=hbm,
      limit_tokens_per_s=limit_tok_s, fraction_of_bandwidth_limit=tok_s / limit_tok_s,
      peak_device_mem_gb=stats.get("peak_bytes_in_use", 0) / 1e9,
      matmul_fp32_gflops=gflops,  # the device's rate; G is bandwidth-bound bf16, read against hbm_tb_s
      host_peak_rss_mb=peak_rss_mb(), repeats=args.repeats)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workload", choices=["auto", "W", "R", "G"], default="auto")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--hf_repeats", type=int, default=3)
  ap.add_argument("--skip_hf", action="store_true")
  ap.add_argument("--checkpoint", default=None,
                  help="W/R checkpoint dir (created if absent; default under the temp dir).")
  ap.add_argument("--hbm_tb_s", type=float, default=None)
  ap.add_argument("--smoke", action="store_true", help="tiny workload G (code-path check).")
  ap.add_argument("--_hf_child", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args._hf_child:
    hf_child(args._hf_child, args.workload, args.hf_repeats)
    return
  workload = args.workload
  if workload == "auto":
    import jax
    workload = "G" if jax.default_backend() == "gpu" else "W"
  res = bench_cpu(args, workload) if workload in CPU_WORKLOADS else bench_gpu(args)
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
  main()
