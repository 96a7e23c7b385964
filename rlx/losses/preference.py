"""Preference losses on summed log-probs (docs/methods.md section 5): DPO, IPO, RPO, MM-DPO.

All share the signature

    fn(chosen_logp_N, rejected_logp_N, ref_chosen_logp_N, ref_rejected_logp_N,
       *, mask_N=None, **options) -> (mean loss over valid pairs, metrics)

where each *_logp_N is a completion's summed token log-prob (pass length-averaged
log-probs to get the length-normalized variants). h = logp_policy - logp_ref.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.losses.aggregation import masked_mean
from rlx.registry import Registry

Array = jax.Array
sg = jax.lax.stop_gradient

PAIR_LOSSES = Registry("pair loss")


def _mask(x: Array, mask_N: Array | None) -> Array:
  return jnp.ones(x.shape[0], bool) if mask_N is None else mask_N > 0


def _margins(chosen, rejected, ref_chosen, ref_rejected, mask):
  h_w = jnp.where(mask, chosen - ref_chosen, 0.0)
  h_l = jnp.where(mask, rejected - ref_rejected, 0.0)
  return h_w, h_l


def _metrics(h_w, h_l, beta, mask) -> dict[str, Array]:
  rw, rl = sg(beta * h_w), sg(beta * h_l)
  return {"reward_chosen": masked_mean(rw, mask), "reward_rejected": masked_mean(rl, mask),
          "reward_margin": masked_mean(rw - rl, mask),
          "accuracy": masked_mean((rw > rl).astype(rw.dtype), mask)}


@PAIR_LOSSES.register("dpo")
def dpo_loss(chosen_logp_N: Array, rejected_logp_N: Array, ref_chosen_logp_N: Array,
             ref_rejected_logp_N: Array, *, beta: float | Array = 0.1,
             mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """DPO: -log sigmoid(beta (h_w - h_l)). beta may be per pair ([N], see mm_dpo)."""
  mask = _mask(chosen_logp_N, mask_N)
  h_w, h_l = _margins(chosen_logp_N, rejected_logp_N, ref_chosen_logp_N, ref_rejected_logp_N, mask)
  losses = -jax.nn.log_sigmoid(beta * (h_w - h_l))
  return masked_mean(losses, mask), _metrics(h_w, h_l, beta, mask)


@PAIR_LOSSES.register("ipo")
def ipo_loss(chosen_logp_N: Array, rejected_logp_N: Array, ref_chosen_logp_N: Array,
             ref_rejected_logp_N: Array, *, beta: float = 0.1,
             mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """IPO (Azar et al. 2023): (h_w - h_l - 1 / (2 beta))^2."""
  mask = _mask(chosen_logp_N, mask_N)
  h_w, h_l = _margins(chosen_logp_N, rejected_logp_N, ref_chosen_logp_N, ref_rejected_logp_N, mask)
  losses = jnp.square(h_w - h_l - 1.0 / (2.0 * beta))
  return masked_mean(losses, mask), _metrics(h_w, h_l, beta, mask)


@PAIR_LOSSES.register("rpo")
def rpo_loss(chosen_logp_N: Array, rejected_logp_N: Array, ref_chosen_logp_N: Array,
             ref_rejected_logp_N: Array, *, beta: float = 0.1, eta: float = 1.0,
             chosen_lengths_N: Array | None = None,
             mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """RPO (Pang et al. 2024): DPO + eta * NLL of the chosen response.

  NLL = -chosen_logp / chosen_length (per-token NLL, as in the paper) when
  chosen_lengths_N is given, else -chosen_logp.
  """
  mask = _mask(chosen_logp_N, mask_N)
  dpo, metrics = dpo_loss(chosen_logp_N, rejected_logp_N, ref_chosen_logp_N,
                          ref_rejected_logp_N, beta=beta, mask_N=mask)
  nll = -jnp.where(mask, chosen_logp_N, 0.0)
  if chosen_lengths_N is not None:
    nll = nll / jnp.maximum(chosen_lengths_N, 1).astype(nll.dtype)
  nll = masked_mean(nll, mask)
  metrics.update(dpo=sg(dpo), nll=sg(nll))
  return dpo + eta * nll, metrics


def mm_dpo_beta(margin_N: Array, *, beta0: float = 0.1, w: float = 0.5, k: float = 0.5) -> Array:
  """MM-DPO dynamic reward scaling: beta0 (1 + w (1 - exp(-k delta))), delta a RM margin.

  w and k defaults are rlx's choice, not from the paper; tune them.
  The margin is treated as data (stop-gradient).
  """
  return beta0 * (1.0 + w * (1.0 - jnp.exp(-k * sg(margin_N))))


@PAIR_LOSSES.register("mm_dpo")
def mm_dpo_loss(chosen_logp_N: Array, rejected_logp_N: Array, ref_chosen_logp_N: Array,
                ref_rejected_logp_N: Array, *, margin_N: Array, beta0: float = 0.1,
                w: float = 0.5, k: float = 0.5,
                mask_N: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """DPO with the per-pair beta of `mm_dpo_beta(margin_N)`."""
  beta_N = mm_dpo_beta(margin_N, beta0=beta0, w=w, k=k)
  loss, metrics = dpo_loss(chosen_logp_N, rejected_logp_N, ref_chosen_logp_N,
                           ref_rejected_logp_N, beta=beta_N, mask_N=mask_N)
  metrics["beta_mean"] = masked_mean(beta_N, _mask(chosen_logp_N, mask_N))
  return loss, metrics
