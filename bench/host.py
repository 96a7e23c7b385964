"""The host's measured fp32 matmul rate, so a benchmark number from another
machine can be read: every bench JSON line carries `matmul_fp32_gflops` and,
where it has a step time, the share of that rate the step achieves.

`model_flops` counts matmul FLOPs the usual way (2 per parameter per token for
a forward pass, 6 for forward + backward, plus the attention scores), so the
share is a model-FLOPs utilization (MFU) against the measured matmul rate.
"""
from __future__ import annotations

import time


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  """Median GFLOP/s of a jitted float32 [n, n] @ [n, n] on the default device."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e9


def model_flops(num_params: int, tokens: int, *, backward: bool = False, layers: int = 0,
                width: int = 0, context: int = 0) -> float:
  """Matmul FLOPs of a decoder pass over `tokens` tokens: 2 (6 with backward)
  per parameter per token, plus 4 * layers * width * context per token for
  attention scores and values (x3 with backward)."""
  per_token = 2 * num_params + 4 * layers * width * context
  return float(per_token * tokens * (3 if backward else 1))


def utilization(flops: float, seconds: float, gflops: float) -> float:
  """Share of the measured matmul rate that `flops` in `seconds` achieve."""
  return flops / max(seconds, 1e-12) / 1e9 / gflops


def median_ms(f, *args, repeats: int) -> float:
  """Median wall milliseconds of `repeats` calls of f(*args) after one warm-up call
  (which compiles); results waited for with jax.block_until_ready."""
  import time

  import jax
  import numpy as np
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times) * 1e3)
