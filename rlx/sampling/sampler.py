"""KV-cache sampler: prefill once per prompt, decode in a `lax.while_loop`.

    rollout = sample(graphdef, params, prompt_tokens_BP, prompt_mask_BP, key, settings)

Prompts are left-padded to a static length P (see `pad_prompts`); completions
have the static length C = settings.max_new_tokens. One jit covers prefill and
decode and is compiled once per (model, settings, B, P).

Layout: row n = b * R + r of every [N = B * R, ...] output is the r-th
completion of prompt b; `group_ids[n] = b`. The KV cache holds prompt token p
at slot p and completion token i at slot P + i (P + C - 1 slots at most; it
grows between decode segments, see `SamplingSettings.decode_segments`). With
`SamplingSettings.tail_rows` = K, the last steps decode only the <= K rows still
live (long-tailed lengths: the ended rows cost nothing more; the same rollout up
to float rounding).
Sampling is exact inverse-CDF sampling from softmax of the filtered logits
(one uniform per row and step, keys `fold_in(key, i)`).
The model runs through `rlx.models.forward` and `rlx.models.lm_head`, the code
the trainer runs (this module holds no layer math), so in bf16 too the
log-probs equal the model's own KV-cached ones.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlx import models
from rlx.sampling.step import SamplingSettings, sample_step


@flax.struct.dataclass
class Rollout:
  """Sampled completions (a pytree; N = B * R rows, row b * R + r).

  Attributes:
    prompt_tokens: [N, P] int32, left-padded prompts (repeated R times).
    prompt_mask: [N, P] bool, True on prompt tokens.
    completion_tokens: [N, C] int32, pad_token_id after the end.
    completion_mask: [N, C] bool, True up to and including the end token.
    sample_logprobs: [N, C] float32, log-probs of the sampled tokens under the
      sampling distribution (temperature, top-k, top-p, min-p); 0 off-mask.
    policy_logprobs: [N, C] float32, log-probs under softmax(raw logits)
      (temperature 1, no filter); 0 off-mask.
    group_ids: [N] int32, the prompt index b of each row.
    truncated: [N] bool, True if no stop token was produced within C tokens.
    completion_lengths: [N] int32, number of completion tokens (end included).
  """
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  completion_tokens: jax.Array
  completion_mask: jax.Array
  sample_logprobs: jax.Array
  policy_logprobs: jax.Array
  group_ids: jax.Array
  truncated: jax.Array
  completion_lengths: jax.Array

  @property
  def tokens(self) -> jax.Array:
    """[N, P + C] prompt then completion tokens."""
    return jnp.concatenate([self.prompt_tokens, self.completion_tokens], axis=1)

  @property
  def mask(self) -> jax.Array:
    """[N, P + C] validity mask of `tokens`."""
    return jnp.concatenate([self.prompt_mask, self.completion_mask], axis=1)


MIN_SEGMENT_STEPS = 8


def _segment_ends(c: int, segments: int) -> list[int]:
  """Ends (exclusive) of the decode-loop segments over step index i in [1, c).

  At most `segments` segments of at least MIN_SEGMENT_STEPS steps each.
  """
  segments = max(1, min(segments, (c - 1) // MIN_SEGMENT_STEPS))
  return [1 + round((c - 1) * j / segments) for j in range(1, segments + 1)]


def _sample(graphdef: Any, params: Any, prompt_tokens_BP: jax.Array, prompt_mask_BP: jax.Array,
            key: jax.Array, settings: SamplingSettings, adapters: Any = None) -> Rollout:
  cfg = models.config_of(graphdef, params)
  b, p = prompt_tokens_BP.shape
  r, c = settings.group_size, settings.max_new_tokens
  n = b * r
  prompt_tokens_BP = prompt_tokens_BP.astype(jnp.int32)
  prompt_mask_BP = prompt_mask_BP.astype(bool)
  # Decode step i (1 <= i < c) feeds completion token i - 1 at slot p + i - 1.
  # The loop runs in segments; segment j attends a cache of p + ends[j] - 1
  # slots, so early steps do not read the cache's unwritten tail.
  ends = _segment_ends(c, settings.decode_segments)
  lengths = [p + e - 1 for e in ends]
  lengths[0] = max(lengths[0], p)
  # Slots after the prompt are valid; causality hides those not yet written.
  kv_mask_BS = jnp.concatenate([prompt_mask_BP, jnp.ones((b, c), bool)], axis=1)
  cache_dtype = jnp.dtype(settings.cache_dtype) if settings.cache_dtype else cfg.compute_dtype
  if settings.unroll_layers:  # per-layer weights and caches, read in place at each step
    layers = models.unstack_layers(cfg, params, adapters)
    cache = models.init_layer_caches(cfg, b, lengths[0], cache_dtype)
    adapters = None  # inside the layers
  else:
    layers = None
    cache = models.init_cache(cfg, b, lengths[0], cache_dtype)
  batch_axis = 0 if settings.unroll_layers else 1  # [B, J, ...] or [L, B, S, J, E]

  def run(tokens_BT, positions_BT, kv_mask, cache, cache_index):
    return models.forward(graphdef, params, tokens_BT, positions_BT, kv_mask, cache=cache,
                          cache_index=cache_index, return_hidden=True, layers=layers,
                          adapters=adapters)

  head_DV = models.head_matrix(cfg, params)  # laid out once per call, not per token

  # Prefill: one pass over the prompts; logits only at the last (real) token.
  hidden_BPD, cache = run(prompt_tokens_BP, models.positions_from_mask(prompt_mask_BP),
                          kv_mask_BS[:, :lengths[0]], cache, 0)
  logits_BV = models.lm_head(graphdef, params, hidden_BPD[:, -1:], head_DV=head_DV)[:, 0]

  # Group replication: row b * R + r reads prompt b's cache.
  rep = lambda x, axis=0: jnp.repeat(x, r, axis=axis) if r > 1 else x
  cache = jax.tree.map(lambda x: rep(x, axis=batch_axis), cache)
  kv_mask_NS = rep(kv_mask_BS)
  prompt_len_N = rep(jnp.sum(prompt_mask_BP, axis=1, dtype=jnp.int32))
  pad = jnp.int32(settings.pad_token_id)
  emit = functools.partial(_emit, key=key, settings=settings)

  def decode_loop(i, end, cache, state, kv_mask, rows_X=None, run_if=lambda state: True):
    """Decode steps i .. end - 1 (all rows, or rows_X with their own cache) while
    one of them is live and run_if(state) holds."""
    def cond(carry):
      i, _, state = carry
      done_X = state[-1] if rows_X is None else state[-1][rows_X]
      return (i < end) & ~jnp.all(done_X) & run_if(state)

    prompt_len_X, mask_XS = prompt_len_N, kv_mask
    if rows_X is not None:
      prompt_len_X, mask_XS = prompt_len_N[rows_X], kv_mask[rows_X]

    def body(carry):
      i, cache, state = carry
      prev_X1 = jax.lax.dynamic_slice_in_dim(state[0], i - 1, 1, axis=1)
      if rows_X is not None:
        prev_X1 = prev_X1[rows_X]
      hidden_X1D, cache = run(prev_X1, (prompt_len_X + i - 1)[:, None], mask_XS, cache,
                              p + i - 1)
      logits_XV = models.lm_head(graphdef, params, hidden_X1D, head_DV=head_DV)[:, 0]
      return i + 1, cache, emit(i, logits_XV, state, rows_X)

    return jax.lax.while_loop(cond, body, (i, cache, state))

  state = (jnp.full((n, c), pad, jnp.int32), jnp.zeros((n, c), bool),
           jnp.zeros((n, c), jnp.float32), jnp.zeros((n, c), jnp.float32),
           jnp.zeros((n,), bool))
  state = emit(0, rep(logits_BV), state)

  state = _run_segments(decode_loop, cache, state, ends, lengths, kv_mask_NS,
                        settings.tail_rows if 0 < settings.tail_rows < n else 0, batch_axis)
  tokens_NC, mask_NC, slogp_NC, plogp_NC, done_N = state
  return Rollout(
      prompt_tokens=rep(prompt_tokens_BP), prompt_mask=rep(prompt_mask_BP),
      completion_tokens=tokens_NC, completion_mask=mask_NC,
      sample_logprobs=slogp_NC, policy_logprobs=plogp_NC,
      group_ids=jnp.arange(n, dtype=jnp.int32) // r, truncated=~done_N,
      completion_lengths=jnp.sum(mask_NC, axis=1, dtype=jnp.int32))


def _emit(i, logits_XV, state, rows_X=None, *, key, settings: SamplingSettings):
  """Samples completion token i of all rows, or of rows `rows_X` (the tail), and
  writes it into the state buffers. A row's uniform is the same either way."""
  tokens_NC, mask_NC, slogp_NC, plogp_NC, done_N = state
  key_i = jax.random.fold_in(key, i)
  uniform_X1 = None
  if rows_X is not None and not settings.greedy:
    uniform_X1 = jax.random.uniform(key_i, (done_N.shape[0], 1), jnp.float32)[rows_X]
  tok_X, slogp_X, plogp_X = sample_step(logits_XV, key_i, settings, uniform_X1)
  at = (slice(None), i) if rows_X is None else (rows_X, i)
  done_X = done_N if rows_X is None else done_N[rows_X]
  live_X = ~done_X
  tok_X = jnp.where(live_X, tok_X, jnp.int32(settings.pad_token_id))
  tokens_NC = tokens_NC.at[at].set(tok_X)
  mask_NC = mask_NC.at[at].set(live_X)
  slogp_NC = slogp_NC.at[at].set(jnp.where(live_X, slogp_X, 0.0))
  plogp_NC = plogp_NC.at[at].set(jnp.where(live_X, plogp_X, 0.0))
  stop_ids = jnp.asarray(settings.stop_token_ids or (-1,), jnp.int32)
  done_X = done_X | (live_X & jnp.any(tok_X[:, None] == stop_ids[None, :], axis=1))
  done_N = done_X if rows_X is None else done_N.at[rows_X].set(done_X)
  return tokens_NC, mask_NC, slogp_NC, plogp_NC, done_N


def _run_segments(decode_loop, cache, state, ends, lengths, kv_mask_NS, k: int,
                  batch_axis: int):
  """The decode loop over its segments (the cache grown between them); returns the
  final state. k > 0 (settings.tail_rows): once at most k rows are live, they are
  gathered (rows_K, their cache rows, live rows first) and the remaining steps
  decode only those."""
  take = lambda cache, rows: jax.tree.map(lambda x: jnp.take(x, rows, axis=batch_axis), cache)
  if k:
    rows_K = jnp.arange(k, dtype=jnp.int32)
    cache_K = take(cache, rows_K)  # placeholder until the tail starts
    in_tail = jnp.bool_(False)
    many_live = lambda state: jnp.sum(~state[-1]) > k
  i = jnp.int32(1)
  for j, (end, length) in enumerate(zip(ends, lengths)):
    if j:  # grow the cache to this segment's length
      cache = models.grow_cache(cache, length - lengths[j - 1])
      if k:
        cache_K = models.grow_cache(cache_K, length - lengths[j - 1])
    kv_mask = kv_mask_NS[:, :length]
    if not k:
      i, cache, state = decode_loop(i, end, cache, state, kv_mask)
      continue
    i, cache, state = decode_loop(i, end, cache, state, kv_mask,
                                  run_if=lambda st: ~in_tail & many_live(st))
    start = ~in_tail & ~many_live(state) & ~jnp.all(state[-1])

    def start_tail(state=state, cache=cache):
      rows = jnp.argsort(state[-1], stable=True)[:k].astype(jnp.int32)
      return rows, take(cache, rows)
    rows_K, cache_K = jax.lax.cond(start, start_tail, lambda: (rows_K, cache_K))
    in_tail = in_tail | start
    i, cache_K, state = decode_loop(i, end, cache_K, state, kv_mask, rows_X=rows_K,
                                    run_if=lambda st, on=in_tail: on)
  return state


_sample_jit = jax.jit(_sample, static_argnames=("graphdef", "settings"))


def sample(graphdef: Any, params: Any, prompt_tokens_BP: jax.Array, prompt_mask_BP: jax.Array,
           key: jax.Array, settings: SamplingSettings, adapters: Any = None) -> Rollout:
  """Samples settings.group_size completions per left-padded prompt.

  Args:
    graphdef, params: the policy (`rlx.models.init_model` / `load_hf`).
    prompt_tokens_BP: [B, P] int, left-padded (every row's last column is a
      real token).
    prompt_mask_BP: [B, P] bool/int, True on prompt tokens.
    key: PRNG key (unused when settings.greedy).
    settings: static `SamplingSettings`.
    adapters: the decoder's `Adapters` (LoRA through the adapter path, an
      int8 / int4 base dequantized per layer); None: params is the whole model.

  Returns:
    A `Rollout` with N = B * R rows. Jitted once per (graphdef, settings, B,
    P); decoding stops early once every row has produced a stop token.
  """
  if not isinstance(settings, SamplingSettings):
    raise TypeError(f"settings must be a SamplingSettings, got {type(settings).__name__}.")
  if prompt_tokens_BP.ndim != 2 or prompt_tokens_BP.shape != prompt_mask_BP.shape:
    raise ValueError(f"prompt tokens and mask must both be [B, P], got "
                     f"{prompt_tokens_BP.shape} and {prompt_mask_BP.shape}.")
  if not isinstance(prompt_mask_BP, jax.core.Tracer):
    last = np.asarray(prompt_mask_BP)[:, -1]
    if not last.all():
      raise ValueError(
          f"prompts must be left-padded (mask True in the last column); rows "
          f"{np.flatnonzero(~last.astype(bool)).tolist()[:8]} are not. Use rlx.sampling.pad_prompts.")
  return _sample_jit(graphdef, params, prompt_tokens_BP, prompt_mask_BP, key, settings, adapters)


def bucket_length(length: int, buckets: Sequence[int] | None) -> int:
  """Smallest bucket >= length (buckets None: length itself)."""
  if not buckets:
    return length
  fits = [bk for bk in sorted(buckets) if bk >= length]
  if not fits:
    raise ValueError(f"prompt of {length} tokens exceeds the largest bucket {max(buckets)} "
                     f"(buckets: {sorted(buckets)}).")
  return fits[0]


def pad_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int,
                buckets: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to the smallest bucket >= the longest prompt.

  Returns (tokens_BP int32, mask_BP bool) numpy arrays.
  """
  if not prompts:
    raise ValueError("pad_prompts needs at least one prompt.")
  lengths = [len(x) for x in prompts]
  if min(lengths) == 0:
    raise ValueError(f"prompt {lengths.index(0)} is empty; every prompt needs >= 1 token.")
  p = bucket_length(max(lengths), buckets)
  tokens_BP = np.full((len(prompts), p), pad_token_id, np.int32)
  mask_BP = np.zeros((len(prompts), p), bool)
  for row, toks in enumerate(prompts):
    tokens_BP[row, p - len(toks):] = np.asarray(toks, np.int32)
    mask_BP[row, p - len(toks):] = True
  return tokens_BP, mask_BP


def decode_completions(tokenizer: Any, rollout: Rollout, skip_special_tokens: bool = False
                       ) -> list[str]:
  """Completion texts, one per row, without pad and end tokens."""
  tokens_NC = np.asarray(rollout.completion_tokens)
  lengths_N = np.asarray(rollout.completion_lengths)
  truncated_N = np.asarray(rollout.truncated)
  pad_id = getattr(tokenizer, "pad_token_id", None)
  texts = []
  for row in range(tokens_NC.shape[0]):
    n = int(lengths_N[row]) - (0 if truncated_N[row] else 1)
    ids = [int(t) for t in tokens_NC[row, :max(n, 0)] if pad_id is None or t != pad_id]
    texts.append(tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))
  return texts
