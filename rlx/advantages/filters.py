"""Sample filters (dynamic sampling), registered in FILTERS.

A filter is `fn(inputs, *, num_groups, **options) -> (keep_N, num_kept_groups)`:
keep_N is bool [N] (False for dropped groups and invalid rows) and
num_kept_groups counts the non-empty groups kept, so the trainer can sample
more prompts until the batch is full (docs/methods.md section 3).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from rlx.advantages import segments as seg
from rlx.advantages.estimators import combined_magnitude, combined_reward, observed
from rlx.advantages.inputs import AdvantageInputs
from rlx.advantages.registry import FILTERS

Array = jax.Array


def _finish(keep_G: Array, inputs: AdvantageInputs, num_groups: int) -> tuple[Array, Array]:
  present = jax.ops.segment_sum(inputs.valid_N.astype(jnp.int32), inputs.group_ids_N,
                                num_groups) > 0
  keep_G = keep_G & present
  return keep_G[inputs.group_ids_N] & inputs.valid_N, keep_G.sum()


def _group_range(x: Array, mask: Array, group_ids_N: Array, num_groups: int,
                 magnitude: Array | None = None) -> Array:
  """max - min over masked-in members; 0 for groups with fewer than one member
  and where the range is at the rounding level of the largest magnitude
  (default |x|; segments.rounding_floor), as the estimators count it."""
  hi = seg.group_max(x, mask, group_ids_N, num_groups)
  lo = seg.group_min(x, mask, group_ids_N, num_groups)
  mag = jnp.abs(x) if magnitude is None else magnitude
  floor = seg.rounding_floor(jnp.maximum(seg.group_max(mag, mask, group_ids_N, num_groups), 0),
                             x.dtype)
  rng = jnp.where(jnp.isfinite(hi) & jnp.isfinite(lo), hi - lo, 0)
  return jnp.where(rng > floor, rng, 0)


@FILTERS.register("dapo")
def dapo_filter(inputs: AdvantageInputs, *, num_groups: int, tol: float = 0.0,
                missing: str = "sum_available") -> tuple[Array, Array]:
  """DAPO: drop groups whose combined reward s = sum_k w_k r_k is constant
  (max - min <= tol over the members with a reward)."""
  s, mask, x = combined_reward(inputs, missing, "dapo filter")
  keep_G = _group_range(s, mask, inputs.group_ids_N, num_groups,
                        combined_magnitude(x, inputs)) > tol
  return _finish(keep_G, inputs, num_groups)


@FILTERS.register("dapo_per_reward")
def dapo_per_reward_filter(inputs: AdvantageInputs, *, num_groups: int,
                           rewards: Sequence[int | str] | None = None, tol: float = 0.0
                           ) -> tuple[Array, Array]:
  """Drop groups where every selected reward (default all) is constant; a
  reward observed on fewer than two members counts as constant."""
  cols = (list(range(inputs.num_rewards)) if rewards is None
          else [inputs.reward_index(c) for c in rewards])
  ia = jnp.asarray(cols)
  obs = observed(inputs)[:, ia]
  rng = _group_range(inputs.rewards_NK[:, ia], obs, inputs.group_ids_N, num_groups)
  keep_G = (rng > tol).any(-1)
  return _finish(keep_G, inputs, num_groups)


@FILTERS.register("lightningrl")
def lightningrl_filter(inputs: AdvantageInputs, *, num_groups: int, accuracy: int | str = 0,
                       speed: int | str = 1, correct_threshold: float = 0.5,
                       min_speed_range: float = 0.01) -> tuple[Array, Array]:
  """LightningRL: drop a group if all rollouts are wrong (accuracy <
  correct_threshold, or missing) or if the range of its speed metric is below
  min_speed_range; all-correct groups are not dropped for being all-correct."""
  obs = observed(inputs)
  ia, isp = inputs.reward_index(accuracy), inputs.reward_index(speed)
  acc = inputs.rewards_NK[:, ia]
  correct = obs[:, ia] & (acc >= correct_threshold)
  any_correct = jax.ops.segment_max(correct.astype(jnp.int32), inputs.group_ids_N,
                                    num_groups) > 0
  rng = _group_range(inputs.rewards_NK[:, isp], obs[:, isp], inputs.group_ids_N, num_groups)
  keep_G = any_correct & (rng >= min_speed_range)
  return _finish(keep_G, inputs, num_groups)
