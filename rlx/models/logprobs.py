"""Per-token log-probabilities and entropies, chunked over the sequence.

`token_logprobs` runs the decoder once to get hidden states, then maps the LM
head + logsumexp over chunks of `chunk_size` positions (jax.lax.map), each chunk
under jax.checkpoint, so neither the forward nor the backward pass holds the
full [B, T, V] float32 logits.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.decoder import positions_from_mask
from rlx.models.sharding import constrain_batch


def logprobs_from_logits(logits_BTV: jax.Array, targets_BT: jax.Array,
                         temperature: float | jax.Array = 1.0) -> tuple[jax.Array, jax.Array]:
  """log softmax(logits / temperature)[target] and entropy, both float32 [B, T]."""
  z = logits_BTV.astype(jnp.float32) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  tgt = jnp.take_along_axis(z, targets_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  probs = jnp.exp(z - lse[..., None])
  entropy = lse - jnp.sum(probs * z, axis=-1)
  return tgt - lse, entropy


def head_logprobs(head, hidden_BTD: jax.Array, targets_BT: jax.Array, chunk_size: int,
                  temperature: float | jax.Array = 1.0, checkpoint_chunks: bool = True
                  ) -> tuple[jax.Array, jax.Array]:
  """(logp_BT, entropy_BT) of targets_BT under softmax(head(hidden_BTD) / temperature),
  over chunks of chunk_size positions (jax.lax.map; T padded up to a multiple),
  each chunk under jax.checkpoint unless checkpoint_chunks is False."""
  B, T, D = hidden_BTD.shape
  X = max(1, min(chunk_size, T))  # tokens per chunk
  n = -(-T // X)
  pad = n * X - T
  if pad:
    hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
  h_nBXD = hidden_BTD.reshape(B, n, X, D).swapaxes(0, 1)  # n chunks
  t_nBX = targets_BT.reshape(B, n, X).swapaxes(0, 1)

  def chunk(args):
    h, t = args
    return logprobs_from_logits(head(h), t, temperature)

  if checkpoint_chunks:
    chunk = jax.checkpoint(chunk, prevent_cse=False)
  logp_nBX, ent_nBX = jax.lax.map(chunk, (h_nBXD, t_nBX))
  return (logp_nBX.swapaxes(0, 1).reshape(B, n * X)[:, :T],
          ent_nBX.swapaxes(0, 1).reshape(B, n * X)[:, :T])


def token_logprobs(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array,
                   mask_BT: jax.Array, chunk_size: int = 128,
                   temperature: float | jax.Array = 1.0, positions_BT: jax.Array | None = None,
                   remat: bool | None = None, checkpoint_chunks: bool = True,
                   segment_ids_BT: jax.Array | None = None, adapters: Any = None,
                   targets_at: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(logp_BT, entropy_BT): log p(tokens[:, t] | tokens[:, :t]) under softmax(logits / T).

  Entry t is 0 unless mask_BT[:, t] and mask_BT[:, t - 1] (so position 0 and the
  first real token of a left-padded row get 0); entropy_BT[:, t] is the entropy
  of the same predictive distribution (the one that produced token t).
  positions default to positions_from_mask(mask_BT). segment_ids_BT (packed
  rows: several sequences per row, each with its own positions_BT): tokens
  attend only their own segment, and entry t is also 0 unless tokens t - 1 and
  t share a segment (the first token of each sequence). chunk_size positions of
  logits exist at a time; T is padded up to a multiple of it. adapters: the
  decoder's `Adapters` (LoRA, an int8 / int4 base), applied in its projections.
  targets_at (int [...], flat indices into [B * T]): returns only those entries,
  shaped like targets_at; when they are fewer than B * T, the LM head runs on their
  predecessors alone (a packed pass scores its completion tokens, not the prompts
  around them), else on every position and the entries are gathered.
  """
  B, T = tokens_BT.shape
  mask_BT = mask_BT.astype(bool)
  if positions_BT is None:
    positions_BT = positions_from_mask(mask_BT)
  model = nnx.merge(graphdef, params)
  if model.cfg.is_reward_model:
    raise ValueError("token_logprobs needs a causal LM; got a reward model config "
                     f"({model.cfg.architectures[0]}).")
  hidden_BTD, _ = model(tokens_BT, positions_BT, mask_BT, return_hidden=True, remat=remat,
                        segment_ids_BT=segment_ids_BT, adapters=adapters)
  follows_BT = mask_BT[:, 1:] & mask_BT[:, :-1]
  if segment_ids_BT is not None:
    follows_BT = follows_BT & (segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1])
  valid_BT = jnp.concatenate([jnp.zeros((B, 1), bool), follows_BT], axis=1)
  at = None if targets_at is None else jnp.asarray(targets_at, jnp.int32)
  if at is not None and at.size < B * T:  # entry t is predicted by t - 1
    M = at.size
    # The M targets laid out as B rows of K = ceil(M / B) (index 0, never valid, pads):
    # a chunk then holds B * chunk_size positions' logits as without targets_at, and
    # the rows split over the batch axes like the rows they came from.
    K = -(-M // B)
    at_BK = jnp.pad(at.reshape(-1), (0, B * K - M)).reshape(B, K)
    pred_BKD = constrain_batch(model.cfg.mesh,
                               hidden_BTD.reshape(B * T, -1)[jnp.maximum(at_BK - 1, 0)])
    logp, ent = head_logprobs(model.head, pred_BKD, jnp.asarray(tokens_BT).reshape(-1)[at_BK],
                              chunk_size, temperature, checkpoint_chunks)
    valid = valid_BT.reshape(-1)[at]
    back = lambda x_BK: x_BK.reshape(-1)[:M].reshape(at.shape)
    return jnp.where(valid, back(logp), 0.0), jnp.where(valid, back(ent), 0.0)
  # hidden[t] predicts tokens[t + 1].
  logp, ent = head_logprobs(model.head, hidden_BTD[:, :-1], tokens_BT[:, 1:], chunk_size,
                            temperature, checkpoint_chunks)
  zeros = jnp.zeros((B, 1), jnp.float32)
  logp_BT = jnp.where(valid_BT, jnp.concatenate([zeros, logp], axis=1), 0.0)
  ent_BT = jnp.where(valid_BT, jnp.concatenate([zeros, ent], axis=1), 0.0)
  if at is not None:
    return logp_BT.reshape(-1)[at], ent_BT.reshape(-1)[at]
  return logp_BT, ent_BT


def completion_logprobs(graphdef: nnx.GraphDef, params: nnx.State, tokens_NT: jax.Array,
                        mask_NT: jax.Array, completion_len: int, *, group_size: int = 1,
                        chunk_size: int = 128, temperature: float | jax.Array = 1.0,
                        remat: bool | str | None = None, adapters: Any = None
                        ) -> tuple[jax.Array, jax.Array]:
  """(logp_NC, entropy_NC) of the last C = completion_len columns of tokens_NT
  [N, P + C] (left-padded prompts, right-padded completions): the last C
  entries of `token_logprobs`, with the LM head run on those C positions only.

  group_size G > 1: rows come in N / G consecutive groups that share their
  prompt columns (a GRPO group). Each prompt then runs once: a pass over the
  N / G prompts returns their keys/values (`forward(return_kv=True)`), and a
  pass over the N completions attends them as a shared `prefix` (gradients of
  the G completions add up in the prompt's). Same values as G = 1 up to float
  rounding, for (N / G) * P + N * C tokens of compute instead of N * (P + C).
  The caller guarantees the shared prompts (rlx/train/rl.py checks them).
  """
  N, T = tokens_NT.shape
  C, G = completion_len, group_size
  P = T - C
  if not 1 <= P < T or N % G:
    raise ValueError(f"completion_logprobs: {N} rows of {T} tokens with completion_len={C}, "
                     f"group_size={G}: need 1 <= P = T - C < T and N a multiple of G.")
  mask_NT = mask_NT.astype(bool)
  positions_NT = positions_from_mask(mask_NT)
  model = nnx.merge(graphdef, params)
  kw = {"return_hidden": True, "remat": remat, "adapters": adapters}
  if G == 1:
    hidden_NTD, _ = model(tokens_NT, positions_NT, mask_NT, **kw)
    pred_NCD = hidden_NTD[:, P - 1:T - 1]  # hidden[t] predicts tokens[t + 1]
  else:
    prompt = lambda x: x[::G, :P]
    hidden_UPD, kv = model(prompt(tokens_NT), prompt(positions_NT), prompt(mask_NT),
                           return_kv=True, **kw)
    hidden_NCD, _ = model(tokens_NT[:, P:], positions_NT[:, P:], mask_NT, prefix=kv, **kw)
    last_N1D = jnp.repeat(hidden_UPD[:, -1:], G, axis=0)  # predicts completion token 0
    pred_NCD = jnp.concatenate([last_N1D, hidden_NCD[:, :-1]], axis=1)
  logp, ent = head_logprobs(model.head, pred_NCD, tokens_NT[:, P:], chunk_size, temperature)
  valid_NC = mask_NT[:, P:] & mask_NT[:, P - 1:T - 1]
  return jnp.where(valid_NC, logp, 0.0), jnp.where(valid_NC, ent, 0.0)


def sequence_logprob(logp_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Sum of token log-probs over mask_BT -> [B]."""
  return jnp.sum(jnp.where(mask_BT, logp_BT, 0.0), axis=-1)


def unchunked_token_logprobs(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array,
                             mask_BT: jax.Array, temperature: Any = 1.0,
                             positions_BT: jax.Array | None = None):
  """Reference: same as token_logprobs but materializes the full logits."""
  mask_BT = mask_BT.astype(bool)
  if positions_BT is None:
    positions_BT = positions_from_mask(mask_BT)
  model = nnx.merge(graphdef, params)
  logits, _ = model(tokens_BT, positions_BT, mask_BT)
  logp, ent = logprobs_from_logits(logits[:, :-1], tokens_BT[:, 1:], temperature)
  valid = mask_BT[:, 1:] & mask_BT[:, :-1]
  z = jnp.zeros((tokens_BT.shape[0], 1), jnp.float32)
  return (jnp.concatenate([z, jnp.where(valid, logp, 0.0)], 1),
          jnp.concatenate([z, jnp.where(valid, ent, 0.0)], 1))
