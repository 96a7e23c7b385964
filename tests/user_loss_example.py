"""A user's own loss term, registered from outside rlx (no edit of rlx).

Selected in a config as  terms = {'pg': {}, 'seq_logp_l2': {'coef': 0.1, 'target': -1.0}}.
"""
import jax.numpy as jnp

from rlx.losses import LOSS_TERMS, LossInputs


@LOSS_TERMS.register("seq_logp_l2")
def seq_logp_l2(inputs: LossInputs, *, target: float = 0.0):
  """Mean over valid completions of (mean token logp - target)^2."""
  m = (inputs.mask_NT > 0).astype(inputs.logp_NT.dtype)
  logp = jnp.where(m > 0, inputs.logp_NT, 0.0)
  len_N = m.sum(-1)
  score_N = (logp * m).sum(-1) / jnp.maximum(len_N, 1.0)
  rows = (len_N > 0).astype(logp.dtype)
  loss = jnp.sum(rows * jnp.square(score_N - target)) / jnp.maximum(rows.sum(), 1.0)
  return loss, {"score_mean": jnp.sum(rows * score_N) / jnp.maximum(rows.sum(), 1.0)}
