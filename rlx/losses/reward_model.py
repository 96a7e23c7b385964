"""Reward-model losses (docs/methods.md section 5), plain functions on scores or logits.

Each returns (mean loss over valid rows, metrics). Registered in `RM_LOSSES`:
bradley_terry, soli_tie, ordinal (OPRM, with region flooding), multi_response,
multi_attribute.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from rlx.losses.aggregation import masked_mean
from rlx.registry import Registry

Array = jax.Array
sg = jax.lax.stop_gradient

RM_LOSSES = Registry("reward-model loss")


def _mask(n: int, mask_N: Array | None) -> Array:
  return jnp.ones(n, bool) if mask_N is None else mask_N > 0


@RM_LOSSES.register("bradley_terry")
def bradley_terry_loss(r_chosen_N: Array, r_rejected_N: Array, *,
                       margin: float | Array = 0.0, center_coef: float = 0.0,
                       mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """-log sigmoid(r_w - r_l - margin) + center_coef * (r_w + r_l)^2.

  margin: scalar or per pair [N] (Llama-2 margin loss). center_coef: reward
  centring (Eisenstein et al. 2023; TRL's center_rewards_coefficient), 0.01
  when used; 0 disables it.
  """
  mask = _mask(r_chosen_N.shape[0], mask_N)
  rw = jnp.where(mask, r_chosen_N, 0.0)
  rl = jnp.where(mask, r_rejected_N, 0.0)
  losses = -jax.nn.log_sigmoid(rw - rl - margin) + center_coef * jnp.square(rw + rl)
  metrics = {"accuracy": masked_mean((sg(rw) > sg(rl)).astype(rw.dtype), mask),
             "margin": masked_mean(sg(rw - rl), mask),
             "reward_mean": masked_mean(sg(rw + rl) / 2, mask)}
  return masked_mean(losses, mask), metrics


def soli_tie_term(r1_N: Array, r2_N: Array, margin: float = 0.0) -> Array:
  """Per-pair tie loss -log sigmoid(r1 - r2 - m) - log sigmoid(r2 - r1 - m); min at r1 = r2."""
  return -jax.nn.log_sigmoid(r1_N - r2_N - margin) - jax.nn.log_sigmoid(r2_N - r1_N - margin)


@RM_LOSSES.register("soli_tie")
def soli_tie_loss(r1_N: Array, r2_N: Array, tie_N: Array, *, margin: float = 0.0,
                  tie_margin: float = 0.0,
                  mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """SoliReward: BT on strict pairs (r1 preferred), the symmetric tie term on ties.

  Strict pair: -log sigmoid(r1 - r2 - margin); tie pair (tie_N true):
  `soli_tie_term(r1, r2, tie_margin)`.
  """
  mask = _mask(r1_N.shape[0], mask_N)
  r1 = jnp.where(mask, r1_N, 0.0)
  r2 = jnp.where(mask, r2_N, 0.0)
  tie = tie_N > 0
  losses = jnp.where(tie, soli_tie_term(r1, r2, tie_margin),
                     -jax.nn.log_sigmoid(r1 - r2 - margin))
  strict = mask & ~tie
  metrics = {"accuracy": masked_mean((sg(r1) > sg(r2)).astype(r1.dtype), strict),
             "tie_abs_gap": masked_mean(jnp.abs(sg(r1 - r2)), mask & tie)}
  return masked_mean(losses, mask), metrics


# ----------------------------------------------------------------------------
# Ordinal probabilistic reward model (OPRM) and region flooding (RgFT)
# ----------------------------------------------------------------------------

def oprm_reward(logits_NS: Array) -> Array:
  """E[s] under p = softmax(logits) over ratings s = 1..S (the scalar reward)."""
  s = jnp.arange(1, logits_NS.shape[-1] + 1, dtype=logits_NS.dtype)
  return jax.nn.softmax(logits_NS, -1) @ s


def _region_masks(regions: Sequence[tuple[int, int]], n_ratings: int) -> Array:
  """[R + 1, S] bool: row r = ratings in region r (1-based inclusive); last row = all."""
  rows = []
  for lo, hi in regions:
    if not 1 <= lo <= hi <= n_ratings:
      raise ValueError(f"OPRM region ({lo}, {hi}) must satisfy 1 <= lo <= hi <= S={n_ratings}.")
    rows.append([lo <= s <= hi for s in range(1, n_ratings + 1)])
  rows.append([True] * n_ratings)
  return jnp.asarray(rows, bool)


def oprm_preference_logprob(logits_c_NS: Array, logits_r_NS: Array,
                            region_c_N: Array | None = None, region_r_N: Array | None = None,
                            regions: Sequence[tuple[int, int]] | None = None) -> Array:
  """log P(chosen > rejected) = log sum_{i > j} p_c(i) p_r(j) [i in R_c] [j in R_r].

  Without regions this is OPRM's event (the strictly lower triangle of the
  S x S joint matrix, rows = chosen rating, columns = rejected rating). With
  quality annotations it is the region-flooding event (see `oprm_loss`).
  """
  n_ratings = logits_c_NS.shape[-1]
  logp_c = jax.nn.log_softmax(logits_c_NS, -1)
  logp_r = jax.nn.log_softmax(logits_r_NS, -1)
  cell = jnp.tril(jnp.ones((n_ratings, n_ratings), bool), -1)[None]   # [1, S, S], i > j
  if region_c_N is not None or region_r_N is not None:
    if regions is None:
      raise ValueError("OPRM region labels need `regions`: a list of (lo, hi) rating ranges.")
    table = _region_masks(regions, n_ratings)
    n_reg = len(regions)

    def lookup(idx):
      if idx is None:
        return jnp.broadcast_to(table[-1], logp_c.shape)
      idx = jnp.where((idx >= 0) & (idx < n_reg), idx, n_reg)   # -1: not annotated
      return table[idx]

    flood = cell & lookup(region_c_N)[:, :, None] & lookup(region_r_N)[:, None, :]
    # A pair whose regions admit no cell with i > j contradicts its label:
    # fall back to the plain OPRM event so the loss stays finite.
    cell = jnp.where(flood.any((1, 2), keepdims=True), flood, cell)
  joint = logp_c[:, :, None] + logp_r[:, None, :]
  return jax.nn.logsumexp(jnp.where(cell, joint, -jnp.inf), axis=(1, 2))


@RM_LOSSES.register("ordinal")
def oprm_loss(logits_c_NS: Array, logits_r_NS: Array, *,
              region_c_N: Array | None = None, region_r_N: Array | None = None,
              regions: Sequence[tuple[int, int]] | None = None,
              mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """OPRM (Chen et al., ICLR 2026): -log P(c > r), P = sum_{i>j} p_c(i) p_r(j).

  logits_*_NS: the LM head's logits of the rating tokens '1'..'S' at the last
  position (p = their softmax). Reward: `oprm_reward` = E[s].

  Region flooding (RgFT): a response may carry a quality-level annotation, an
  index into `regions` (static list of inclusive rating ranges, e.g.
  ((1, 4), (6, 9)) for bad / good on S = 9); -1 means not annotated (whole
  scale). The preference event is then restricted to the sub-region
  {i > j, i in R_c, j in R_r} of the lower triangle, so the loss pushes each
  annotated response's probability mass into its quality region while keeping
  the ordering constraint and its gradient, even when both responses share a
  region (the event is then the lower triangle of that block). Unannotated
  pairs give plain OPRM (semi-supervised). This follows the paper's abstract
  and summaries (mass concentrated in rating sub-regions, regions expanded to
  lower-triangular ones); the full text was not available to check details.
  """
  mask = _mask(logits_c_NS.shape[0], mask_N)
  lc = jnp.where(mask[:, None], logits_c_NS, 0.0)
  lr = jnp.where(mask[:, None], logits_r_NS, 0.0)
  log_p = oprm_preference_logprob(lc, lr, region_c_N, region_r_N, regions)
  loss = masked_mean(-log_p, mask)
  rc, rr = oprm_reward(sg(lc)), oprm_reward(sg(lr))
  metrics = {"accuracy": masked_mean((rc > rr).astype(rc.dtype), mask),
             "p_preference": masked_mean(jnp.exp(sg(log_p)), mask),
             "reward_chosen": masked_mean(rc, mask), "reward_rejected": masked_mean(rr, mask)}
  return loss, metrics


# ----------------------------------------------------------------------------
# Multi-response and multi-attribute
# ----------------------------------------------------------------------------

@RM_LOSSES.register("multi_response")
def multi_response_loss(scores_NM: Array, best_N: Array, *, mask_NM: Array | None = None,
                        mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """You Only Judge Once: M responses scored in one pass; -log softmax(s)[best].

  mask_NM excludes padded responses from the softmax.
  """
  mask = _mask(scores_NM.shape[0], mask_N)
  valid = jnp.ones(scores_NM.shape, bool) if mask_NM is None else mask_NM > 0
  s = jnp.where(valid & mask[:, None], scores_NM, -1e9)
  logp = jax.nn.log_softmax(s, -1)
  best = best_N.astype(jnp.int32)
  picked = jnp.take_along_axis(logp, best[:, None], -1)[:, 0]
  acc = (jnp.argmax(sg(s), -1) == best).astype(scores_NM.dtype)
  return masked_mean(-picked, mask), {"accuracy": masked_mean(acc, mask)}


@RM_LOSSES.register("multi_attribute")
def multi_attribute_loss(pred_NK: Array, target_NK: Array, *,
                         mask_NK: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """HelpSteer2 regression: MSE over the attribute heads, mean over valid (i, k) entries."""
  valid = jnp.ones(pred_NK.shape, bool) if mask_NK is None else mask_NK > 0
  err = jnp.where(valid, pred_NK - jnp.where(valid, target_NK, 0.0), 0.0)
  per_attr = jnp.sum(jnp.square(sg(err)), 0) / jnp.maximum(valid.sum(0), 1)
  metrics = {f"mse_{k}": per_attr[k] for k in range(pred_NK.shape[-1])}
  return masked_mean(jnp.square(err), valid), metrics


def multi_attribute_reward(pred_NK: Array, weights_K: Sequence[float] | Array) -> Array:
  """reward = w . y_hat."""
  return pred_NK @ jnp.asarray(weights_K, pred_NK.dtype)
