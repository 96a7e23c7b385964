"""`LossInputs`: the pytree every policy-loss term reads.

Shapes: N completions (rows), T response positions (static, padded).
Arrays named `*_NT` are per token, `*_N` per completion. Padded positions
(mask 0) may hold anything, NaN included: every term selects them out with
`jnp.where` before any arithmetic, so neither values nor gradients see them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

_DATA_FIELDS = (
    "logp_NT", "mask_NT", "advantages", "old_logp_NT", "sample_logp_NT",
    "ref_logp_NT", "entropy_NT", "correct_N", "group_N", "lengths_N")
_META_FIELDS = ("max_len", "num_groups")


@dataclasses.dataclass(frozen=True)
class LossInputs:
  """Inputs of the policy-loss terms (a JAX pytree; `max_len`, `num_groups` static).

  Attributes:
    logp_NT: log-probs of the sampled tokens under the policy being trained
      (the only differentiable input).
    mask_NT: 1 for response tokens that count, 0 for padding (bool or float).
    advantages: [N] (one per completion) or [N, T] (token-level).
    old_logp_NT: log-probs under the policy at rollout time (the PPO ratio's
      denominator). None: `stop_gradient(logp_NT)` (one update per batch).
    sample_logp_NT: log-probs reported by the sampler (e.g. an inference engine
      in bf16); used by the truncated importance-sampling correction and the
      `approx_kl` metric. None: same as old_logp_NT.
    ref_logp_NT: log-probs under the frozen reference policy (KL term).
    entropy_NT: per-token entropy of the policy (entropy bonus).
    correct_N: 1/True for completions judged correct (NLL anchor, DRPO).
    group_N: int prompt-group id of each completion, in [0, num_groups) (DRPO).
    lengths_N: completion lengths; None: `mask_NT.sum(-1)` (DRPO length weight).
    max_len: L_max of the `constant` aggregation and of DRPO; None: T.
    num_groups: static upper bound on group ids; None: N.
  """

  logp_NT: Array
  mask_NT: Array
  advantages: Array | None = None
  old_logp_NT: Array | None = None
  sample_logp_NT: Array | None = None
  ref_logp_NT: Array | None = None
  entropy_NT: Array | None = None
  correct_N: Array | None = None
  group_N: Array | None = None
  lengths_N: Array | None = None
  max_len: int | None = None
  num_groups: int | None = None

  def replace(self, **changes: Any) -> "LossInputs":
    return dataclasses.replace(self, **changes)

  @property
  def num_rows(self) -> int:
    return self.logp_NT.shape[0]

  @property
  def num_positions(self) -> int:
    return self.logp_NT.shape[1]

  @property
  def l_max(self) -> int:
    return self.max_len if self.max_len is not None else self.num_positions

  @property
  def old_logp(self) -> Array:
    if self.old_logp_NT is None:
      return jax.lax.stop_gradient(self.logp_NT)
    return self.old_logp_NT

  @property
  def sample_logp(self) -> Array:
    return self.old_logp if self.sample_logp_NT is None else self.sample_logp_NT

  @property
  def lengths(self) -> Array:
    if self.lengths_N is not None:
      return self.lengths_N
    return (self.mask_NT > 0).sum(-1)

  def require(self, field: str, term: str) -> Array:
    """Returns field `field`, or raises a clear error naming the term that needs it."""
    value = getattr(self, field)
    if value is None:
      raise ValueError(f"Loss term {term!r} needs LossInputs.{field}, which is None.")
    return value


jax.tree_util.register_dataclass(
    LossInputs, data_fields=list(_DATA_FIELDS), meta_fields=list(_META_FIELDS))


def masked(x: Array, mask: Array, fill: float = 0.0) -> Array:
  """`x` where mask, else `fill`: keeps padding (even NaN/inf) out of values and grads."""
  return jnp.where(mask > 0, x, jnp.asarray(fill, x.dtype))


def broadcast_advantages(adv: Array, shape_NT: tuple[int, int]) -> Array:
  """[N] -> [N, 1] (broadcasts over tokens); [N, T] unchanged."""
  if adv.ndim == 1:
    return adv[:, None]
  if adv.shape != tuple(shape_NT):
    raise ValueError(f"advantages must be [N] or [N, T]={tuple(shape_NT)}, got {adv.shape}.")
  return adv
