"""The jitted pure functions of an RL step (no I/O, no Python state).

    logprobs_fn(params, tokens, mask, packing=None)  -> logp [N, C], entropy [N, C]
    update_fn(state, batch)                          -> state, metrics   (state donated)
Both take a static keyword group_size: rows in groups of that many sharing
their prompt columns run each prompt once (`completion_logprobs`).

With LoRA (`effective` given), `state.params` are the adapters only and the
functions take the frozen base as one more argument, never donated:
    logprobs_fn(adapters, frozen, tokens, mask, ...)  (adapters {}: the base model)
    update_fn(state, batch, frozen)                   (gradient w.r.t. the adapters only)
`effective(trainable, frozen, step) -> (model params, decoder Adapters)`:
step is the update's `state.step` (LoRA dropout's key), None in logprobs_fn.

`batch` is a dict of arrays for one minibatch:
    tokens [n, P+C], attn_mask [n, P+C], loss_mask [n, C], adv [n] or [n, C],
    old_logp [n, C], sample_logp [n, C], ref_logp [n, C], correct [n], group [n], lengths [n]
and, packed (rlx/train/layout.py), pack_src, pack_seg [B', T'] and unpack [n, C].
The completions are the last C = loss_mask.shape[1] columns of `tokens`, so a
batch trimmed to shorter prompts and completions (rlx/train/layout.py) runs
through the same functions (one compile per shape).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from rlx import losses
from rlx.models.decoder import positions_from_mask
from rlx.models import logprobs as lp

PACKING_KEYS = ("pack_src", "pack_seg", "unpack")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  skipped: jax.Array  # updates skipped for a non-finite loss or gradient


def completion_logprobs(graphdef, params, tokens, attn_mask, completion_len: int,
                        temperature: float = 1.0, chunk: int = 0, remat: bool | str = False,
                        packing: Mapping[str, jax.Array] | None = None, adapters: Any = None,
                        group_size: int = 1):
  """Log-probs and entropies [n, C] of the completion tokens, the last
  `completion_len` columns of tokens [n, P + C]; adapters: the decoder's
  `Adapters` (LoRA, an int8 / int4 base).

  group_size G > 1: the rows are n / G groups of G that share their prompt
  columns, and each prompt runs once (`rlx.models.logprobs.completion_logprobs`).
  packing (`pack_src`, `pack_seg`, `unpack` of rlx/train/layout.py): the model
  runs on the packed rows (segment ids, each sequence's own positions) and the
  results are gathered back to [n, C]; the same values as unpacked.
  """
  kw = {"temperature": temperature, "remat": remat, "adapters": adapters}
  if chunk:
    kw["chunk_size"] = chunk
  attn_mask = attn_mask.astype(bool)
  if packing is None:
    return lp.completion_logprobs(graphdef, params, tokens, attn_mask, completion_len,
                                  group_size=group_size, **kw)
  src_BT = packing["pack_src"]
  live_BT = src_BT >= 0
  take = lambda x_nT: jnp.where(live_BT, x_nT.reshape(-1)[jnp.maximum(src_BT, 0)], 0)
  # the completion entries [n, C]; with long prompts the LM head runs on those alone
  return lp.token_logprobs(graphdef, params, take(tokens), live_BT,
                           positions_BT=take(positions_from_mask(attn_mask)),
                           segment_ids_BT=packing["pack_seg"], targets_at=packing["unpack"],
                           **kw)


def make_logprobs_fn(graphdef, prompt_len: int, temperature: float, chunk: int,
                     effective=None):
  """The jitted completion log-probs of (params, tokens, mask[, packing]);
  completions start at column `prompt_len` (static keyword: a trimmed batch's);
  group_size (static keyword): rows in groups sharing their prompt (see
  `completion_logprobs`)."""
  static = ("prompt_len", "group_size")

  def fn(params, tokens, attn_mask, packing=None, prompt_len=prompt_len, group_size=1):
    return completion_logprobs(graphdef, params, tokens, attn_mask,
                               tokens.shape[1] - prompt_len, temperature, chunk, packing=packing,
                               group_size=group_size)

  if effective is not None:
    def lora_fn(adapters, frozen, tokens, attn_mask, packing=None, prompt_len=prompt_len,
                group_size=1):
      params, ad = effective(adapters, frozen, None)
      return completion_logprobs(graphdef, params, tokens, attn_mask,
                                 tokens.shape[1] - prompt_len, temperature, chunk,
                                 packing=packing, adapters=ad, group_size=group_size)
    return jax.jit(lora_fn, static_argnames=static)
  return jax.jit(fn, static_argnames=static)


def make_loss_fn(graphdef, terms: Mapping[str, Any], *, temperature: float, chunk: int,
                 detached_old: bool, max_len: int, num_groups: int | None = None,
                 remat: bool | str = False):
  """loss_fn(params, batch, adapters=None, group_size=1) -> (loss, metrics) of the
  configured loss terms (not jitted); adapters: the decoder's `Adapters` (LoRA);
  group_size: rows in groups sharing their prompt (see `completion_logprobs`)."""
  terms = {k: dict(v) for k, v in terms.items()}

  def loss_fn(params, batch, adapters=None, group_size=1):
    packing = {k: batch[k] for k in PACKING_KEYS} if "unpack" in batch else None
    logp, ent = completion_logprobs(graphdef, params, batch["tokens"], batch["attn_mask"],
                                    batch["loss_mask"].shape[1], temperature, chunk, remat,
                                    packing, adapters, group_size)
    inputs = losses.LossInputs(
        logp_NT=logp, mask_NT=batch["loss_mask"], advantages=batch["adv"],
        old_logp_NT=None if detached_old else batch["old_logp"],
        sample_logp_NT=batch["sample_logp"], ref_logp_NT=batch.get("ref_logp"),
        entropy_NT=ent, correct_N=batch.get("correct"), group_N=batch.get("group"),
        lengths_N=batch.get("lengths"), max_len=max_len, num_groups=num_groups)
    loss, metrics = losses.total_loss(terms, inputs)
    return loss, metrics

  return loss_fn


def make_update_fn(graphdef, tx: optax.GradientTransformation, terms: Mapping[str, Any], *,
                   temperature: float, chunk: int, detached_old: bool,
                   remat: bool | str = False,
                   max_len: int, num_groups: int | None = None, state_shardings: Any = None,
                   effective=None):
  """One optimizer update on a minibatch. Skips (keeps the state) if the loss
  or the gradient is not finite, and counts it in `state.skipped`.
  group_size (static keyword): the minibatch's rows are groups of that many
  sharing their prompt (see `completion_logprobs`).

  `effective(trainable, frozen, step) -> (model params, decoder Adapters)`
  (LoRA): the update takes `frozen` as a third argument and differentiates
  only `state.params` (the adapters; the base is not differentiated); the
  optimizer state exists only for them.

  `state_shardings` (a TrainState of shardings, e.g. the initial state's)
  pins the new state to the same layout, so params and optimizer state keep
  their shards from step to step (and the step compiles once).
  """
  loss_fn = make_loss_fn(graphdef, terms, temperature=temperature,
                         chunk=chunk, detached_old=detached_old, max_len=max_len,
                         num_groups=num_groups, remat=remat)

  def update(state: TrainState, batch, frozen=None, group_size=1):
    def model_loss(p, b):
      if effective is None:
        return loss_fn(p, b, group_size=group_size)
      params, ad = effective(p, frozen, state.step)
      return loss_fn(params, b, ad, group_size)
    (loss, metrics), grads = jax.value_and_grad(model_loss, has_aux=True)(state.params, batch)
    gnorm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = TrainState(step=state.step + 1, params=pick(new_params, state.params),
                           opt_state=pick(new_opt, state.opt_state),
                           skipped=state.skipped + (~ok).astype(jnp.int32))
    if state_shardings is not None:
      new_state = jax.lax.with_sharding_constraint(new_state, state_shardings)
    metrics = dict(metrics, loss=loss, grad_norm=gnorm, skipped=(~ok).astype(jnp.float32))
    return new_state, metrics

  return jax.jit(update, donate_argnums=(0,), static_argnames=("group_size",))
