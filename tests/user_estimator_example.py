"""A user's own advantage estimator, registered from their own file (no rlx edits).

Range-normalized group baseline: A = (s - mean_g s) / (max_g s - min_g s + eps).
"""
import jax.numpy as jnp

from rlx.advantages import ESTIMATORS, segments
from rlx.advantages.estimators import combined_reward


@ESTIMATORS.register("range_norm")
def range_norm(inputs, *, num_groups: int, eps: float = 1e-6):
  s, mask, _ = combined_reward(inputs, "sum_available", "range_norm")
  g = inputs.group_ids_N
  moments = segments.group_moments(s, mask, g, num_groups)
  hi = segments.group_max(s, mask, g, num_groups)[g]
  lo = segments.group_min(s, mask, g, num_groups)[g]
  spread = jnp.where(mask, hi - lo, 0)
  return segments.safe_divide(moments.centered, spread + eps, mask), {"mean_spread": spread.mean()}
