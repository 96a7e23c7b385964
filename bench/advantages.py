"""Benchmark: every registered advantage estimator on 1M completions x 8 rewards.

    python bench/advantages.py [--n=1048576] [--k=8] [--groups=65536] [--repeats=5]
                               [--no_malloc_reuse] [--only=grpo,gdpo]

Prints ONE JSON line: per estimator, compile seconds (first call: trace,
compile, run) and the median wall milliseconds per call after one warm-up
call, with the section-7 diagnostics ("ms") and without ("ms_no_diag"), plus
the median process CPU milliseconds ("cpu_ms", "cpu_ms_no_diag": all threads;
less sensitive to other load on a shared machine). CPU, jitted. Also the
host's fp32 matmul GFLOP/s measured in the same run (bench/host.py), to read
the times against another machine (the estimators are elementwise, segment
and sort work, not matmuls, so no FLOP utilization is given).

XLA's CPU runtime allocates its buffers with malloc; glibc serves buffers of
32 MiB and more with fresh mmap'd pages and returns them after every call, so
each call pays page faults for every large temporary (about 15 ms per
[1M, 8] float32 buffer on the 2-core CI machine). By default the benchmark
raises glibc's mmap/trim thresholds (mallopt) so that freed buffers are
reused, as a long-running trainer process with a caching allocator does;
--no_malloc_reuse measures glibc's defaults.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time

# Allow `python bench/advantages.py` from a checkout without installing rlx.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _malloc_reuse() -> bool:
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  m_trim_threshold, m_mmap_threshold = -1, -3
  ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
  ok &= libc.mallopt(m_trim_threshold, 1 << 30) == 1
  return bool(ok)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=1 << 20)
  parser.add_argument("--k", type=int, default=8)
  parser.add_argument("--groups", type=int, default=1 << 16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--tokens", type=int, default=16, help="T for token-level estimators")
  parser.add_argument("--only", type=str, default="", help="comma-separated estimator names")
  parser.add_argument("--no_malloc_reuse", action="store_true")
  args = parser.parse_args()
  malloc_reuse = False if args.no_malloc_reuse else _malloc_reuse()

  import jax
  import numpy as np

  from host import matmul_gflops
  from rlx.advantages import ESTIMATORS, AdvantageInputs, compute_advantages, fit_reference_stats

  gflops = matmul_gflops()

  n, k, g = args.n, args.k, args.groups
  gsize = n // g
  rng = np.random.default_rng(0)
  rewards = np.empty((n, k), np.float32)
  rewards[:, : k // 2] = rng.random((n, k // 2)) < 0.5                  # binary rewards
  rewards[:, k // 2:] = rng.normal(size=(n, k - k // 2)).astype(np.float32)  # continuous
  rewards[rng.random(n) < 0.01, k - 1] = np.nan                          # 1% missing
  group_ids = np.repeat(np.arange(g, dtype=np.int32), gsize)
  pairwise = rng.choice(np.array([0.0, 0.5, 1.0], np.float32), size=(n, gsize - 1))
  num_phases = 2
  phase_mask = np.zeros((n, num_phases, args.tokens), bool)
  phase_mask[:, 0, : args.tokens // 2] = True
  phase_mask[:, 1, args.tokens // 2:] = True
  num_turns = 4
  inputs = AdvantageInputs.create(
      rewards, group_ids, reward_names=[f"r{i}" for i in range(k)],
      lengths_N=rng.integers(1, 512, n).astype(np.int32),
      task_ids_N=(group_ids % 4).astype(np.int32),
      agent_ids_N=(np.arange(n) % 2).astype(np.int32),
      pairwise_NM=pairwise,
      phase_mask_NZT=phase_mask,
      turn_scores_NU=rng.random((n, num_turns)).astype(np.float32),
      turn_ids_NT=np.repeat(np.arange(num_turns), args.tokens // num_turns)[None].repeat(n, 0))
  stats = fit_reference_stats(rewards[: 4096])
  options = {
      "agent_grouping": dict(num_agents=2),
      "tmn_reweight": dict(num_tasks=4),
      "reference_frozen": dict(stats=stats),
      "f_grpo": dict(phase_columns=(0, k // 2)),
      "gdpo": dict(),
  }
  names = [x for x in args.only.split(",") if x] or ESTIMATORS.names()
  results = {}
  for name in names:
    opts = options.get(name, {})
    res = {}
    for diag in (True, False):
      fn = jax.jit(lambda inp, name=name, opts=opts, diag=diag:
                   compute_advantages(name, inp, g, diagnostics=diag, **opts))
      t0 = time.perf_counter()
      jax.block_until_ready(fn(inputs))
      compile_s = time.perf_counter() - t0
      jax.block_until_ready(fn(inputs))  # warm-up
      times, cpu = [], []
      for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(inputs))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
      key = "ms" if diag else "ms_no_diag"
      res[key] = round(float(np.median(times)) * 1e3, 2)
      res["cpu_" + key] = round(float(np.median(cpu)) * 1e3, 2)
      res["compile_s" if diag else "compile_s_no_diag"] = round(compile_s, 2)
    print(f"# {name}: {res}", file=sys.stderr, flush=True)
    results[name] = res
  print(json.dumps({
      "bench": "advantages", "n": n, "k": k, "groups": g, "group_size": gsize,
      "repeats": args.repeats, "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(), "python": platform.python_version(),
      "jax": jax.__version__, "malloc_reuse": malloc_reuse,
      "matmul_fp32_gflops": round(gflops, 1), "estimators": results}))


if __name__ == "__main__":
  main()
