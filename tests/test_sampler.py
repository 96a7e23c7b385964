"""KV-cache sampler: parity with transformers generate, log-probs, distribution, compiles."""
import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

from rlx import models, testing
from rlx.sampling import (Rollout, SamplingSettings, decode_completions, filter_logits,
                          pad_prompts, sample)
from rlx.sampling import sampler as sampler_lib


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp("sampler_ckpts")
  return {fam: testing.make_tiny_checkpoint(root / fam, fam, seed=i, tied=(fam != "llama"))
          for i, fam in enumerate(["qwen2", "llama", "qwen3"])}


def hf_greedy(model, tokens, mask, max_new_tokens, eos):
  model.generation_config.eos_token_id = None  # stop only on `eos` (None: never)
  with torch.no_grad():
    out = model.generate(
        input_ids=torch.as_tensor(tokens, dtype=torch.long),
        attention_mask=torch.as_tensor(mask, dtype=torch.long), do_sample=False,
        max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0)
  return out[:, tokens.shape[1]:].numpy()


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_greedy_matches_transformers_generate(ckpts, family):
  c = 12
  hf = testing.load_torch_model(ckpts[family])
  _, graphdef, params = models.load_hf(ckpts[family])
  tokens, mask = testing.padded_batch(7, 3, 9)  # left-padded, lengths differ
  assert len(set(mask.sum(1))) > 1
  # Pick a stop token that row 1 first produces at step j >= 3 (rows stop at different steps).
  free = hf_greedy(hf, tokens, mask, c, eos=None)
  j = next(j for j in range(3, c) if free[1, j] not in free[1, :j])
  stop = int(free[1, j])
  ref = hf_greedy(hf, tokens, mask, c, eos=stop)
  settings = SamplingSettings(max_new_tokens=c, greedy=True, stop_token_ids=(stop,),
                              group_size=2, pad_token_id=0)
  r = sample(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
             settings)
  got = np.asarray(r.completion_tokens)
  assert got.shape == (6, c)
  np.testing.assert_array_equal(got[0::2], got[1::2])  # both group members (greedy)
  np.testing.assert_array_equal(got[0::2, :ref.shape[1]], ref)
  assert (got[:, ref.shape[1]:] == 0).all()
  # Lengths / truncation / mask from the first stop token.
  for row in range(3):
    hits = np.flatnonzero(free[row] == stop)
    length = hits[0] + 1 if len(hits) else c
    for n in (2 * row, 2 * row + 1):
      assert r.completion_lengths[n] == length
      assert bool(r.truncated[n]) == (len(hits) == 0)
      np.testing.assert_array_equal(r.completion_mask[n], np.arange(c) < length)
  assert r.completion_lengths[2] == j + 1 and not r.truncated[2]
  np.testing.assert_array_equal(r.group_ids, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(r.prompt_tokens[1::2], tokens)


def _teacher_forced(graphdef, params, r: Rollout, settings):
  """Log-probs of the completion tokens from one full forward pass (no cache)."""
  tokens, mask = r.tokens, r.mask
  logits, _ = models.forward(graphdef, params, tokens, models.positions_from_mask(mask), mask)
  p = r.prompt_tokens.shape[1]
  logits = logits[:, p - 1:-1]  # predicts completion token i
  tgt = r.completion_tokens[..., None]
  raw = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tgt, -1)[..., 0]
  filt = filter_logits(logits, temperature=settings.temperature, top_k=settings.top_k,
                       top_p=settings.top_p, min_p=settings.min_p)
  samp = jnp.take_along_axis(jax.nn.log_softmax(filt, -1), tgt, -1)[..., 0]
  m = r.completion_mask
  return jnp.where(m, raw, 0.0), jnp.where(m, samp, 0.0), logits


def test_logprobs_equal_teacher_forced(ckpts):
  _, graphdef, params = models.load_hf(ckpts["qwen2"])
  tokens, mask = testing.padded_batch(3, 2, 6)
  settings = SamplingSettings(max_new_tokens=25, temperature=0.8, top_k=40, top_p=0.9,
                              min_p=0.02, group_size=3, stop_token_ids=(5, 9, 17, 30))
  assert len(sampler_lib._segment_ends(25, settings.decode_segments)) == 3
  r = sample(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(1),
             settings)
  # The model's scanned forward (stacked cache, 2 segments) gives the same rollout.
  r_scan = sample(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(1),
                  dataclasses.replace(settings, unroll_layers=False, decode_segments=2))
  np.testing.assert_array_equal(r.completion_tokens, r_scan.completion_tokens)
  np.testing.assert_allclose(r.sample_logprobs, r_scan.sample_logprobs, atol=1e-5)
  assert (~r.truncated).any() and r.truncated.any()  # some rows stop early, some don't
  raw, samp, logits = _teacher_forced(graphdef, params, r, settings)
  np.testing.assert_allclose(r.policy_logprobs, raw, atol=1e-5, rtol=0)
  np.testing.assert_allclose(r.sample_logprobs, samp, atol=1e-5, rtol=0)
  assert np.isfinite(np.asarray(r.sample_logprobs)).all()
  # The raw ones also match transformers' logits of the same sequences.
  hf_logits = testing.torch_logits(testing.load_torch_model(ckpts["qwen2"]), r.tokens, r.mask)
  hf_lp = jax.nn.log_softmax(jnp.asarray(hf_logits[:, tokens.shape[1] - 1:-1]), -1)
  hf_raw = jnp.take_along_axis(hf_lp, r.completion_tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(r.policy_logprobs, jnp.where(r.completion_mask, hf_raw, 0),
                             atol=1e-5, rtol=0)
  # Group members differ (sampling), tokens after the end are padding.
  assert len({tuple(x) for x in np.asarray(r.completion_tokens)}) > 2
  np.testing.assert_array_equal(np.asarray(r.completion_tokens)[~np.asarray(r.completion_mask)], 0)
  stops = np.isin(np.asarray(r.completion_tokens), settings.stop_token_ids) & np.asarray(
      r.completion_mask)
  np.testing.assert_array_equal(stops.sum(1), ~np.asarray(r.truncated))


def test_tail_rows_give_the_same_rollout(ckpts, monkeypatch):
  """settings.tail_rows: once <= K rows are live, only they decode (their cache
  rows gathered); tokens, masks and log-probs equal the all-rows loop's, and
  decode steps really ran on K rows (the head's row counts, seen at run time)."""
  _, graphdef, params = models.load_hf(ckpts["qwen2"])
  tokens, mask = (jnp.asarray(x) for x in testing.padded_batch(3, 2, 6))
  settings = SamplingSettings(max_new_tokens=40, temperature=0.8, top_k=40, group_size=3,
                              stop_token_ids=(5, 9, 11, 12, 13, 17, 30, 40, 41, 42, 43, 44))
  head_rows = []
  real_head = sampler_lib.models.lm_head

  def counting_head(graphdef, params, hidden, **kw):
    n = hidden.shape[0]
    jax.debug.callback(lambda: head_rows.append(n))
    return real_head(graphdef, params, hidden, **kw)

  monkeypatch.setattr(sampler_lib.models, "lm_head", counting_head)
  run = lambda **kw: sample(graphdef, params, tokens, mask, jax.random.key(1),
                            dataclasses.replace(settings, **kw))
  full = run()
  assert set(head_rows) == {2, 6}  # prefill (2 prompts), then 6 rows
  lengths = np.sort(np.asarray(full.completion_lengths))
  assert lengths[-3] < lengths[-1] < 40  # the last 2 rows run alone for a while
  for kw in (dict(tail_rows=1), dict(tail_rows=3), dict(tail_rows=4, unroll_layers=False)):
    head_rows.clear()
    tail = run(**kw)
    assert head_rows.count(kw["tail_rows"]) >= lengths[-1] - lengths[-2], kw  # the tail ran
    for name in ("completion_tokens", "completion_mask", "truncated", "completion_lengths"):
      np.testing.assert_array_equal(getattr(tail, name), getattr(full, name), err_msg=name)
    for name in ("sample_logprobs", "policy_logprobs"):
      np.testing.assert_allclose(getattr(tail, name), getattr(full, name), atol=1e-5,
                                 err_msg=name)
  with pytest.raises(ValueError, match="tail_rows must be >= 0"):
    SamplingSettings(tail_rows=-1)


def _chisquare(samples: np.ndarray, probs: np.ndarray) -> float:
  """p-value of counts vs probs, pooling cells with expected count < 5 into one."""
  counts = np.bincount(samples, minlength=probs.shape[0]).astype(np.float64)
  assert counts[probs == 0].sum() == 0, "a filtered-out token was sampled"
  exp = probs / probs.sum() * len(samples)
  big = exp >= 5
  obs_c = np.append(counts[big], counts[~big].sum())
  exp_c = np.append(exp[big], exp[~big].sum())
  if exp_c[-1] < 5:  # merge the pooled cell into the smallest big cell
    i = np.argmin(exp_c[:-1])
    obs_c[i] += obs_c[-1]
    exp_c[i] += exp_c[-1]
    obs_c, exp_c = obs_c[:-1], exp_c[:-1]
  assert len(exp_c) >= 4
  return scipy.stats.chisquare(obs_c, exp_c).pvalue


def _filtered_probs(logits_V, settings):
  f = filter_logits(jnp.asarray(logits_V)[None], temperature=settings.temperature,
                    top_k=settings.top_k, top_p=settings.top_p, min_p=settings.min_p)[0]
  p = np.asarray(jax.nn.softmax(f), np.float64)
  return p / p.sum()


def test_sampled_tokens_follow_filtered_softmax(ckpts):
  """Chi-square of the first token (prefill path) and of the second (decode path)."""
  _, graphdef, params = models.load_hf(ckpts["qwen2"])
  prompt = [30, 31, 32, 33, 34, 35]
  tokens, mask = pad_prompts([prompt], pad_token_id=0, buckets=[8])
  settings = SamplingSettings(max_new_tokens=2, temperature=0.7, top_k=20, top_p=0.95,
                              min_p=0.01, group_size=6000)
  r = sample(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(7),
             settings)
  comp = np.asarray(r.completion_tokens)
  logits, _ = models.forward(graphdef, params, jnp.asarray(tokens), models.positions_from_mask(
      jnp.asarray(mask)), jnp.asarray(mask))
  probs0 = _filtered_probs(logits[0, -1], settings)
  assert (probs0 > 0).sum() >= 5
  assert _chisquare(comp[:, 0], probs0) > 1e-3
  # Second token given the most frequent first token.
  first = collections.Counter(comp[:, 0]).most_common(1)[0][0]
  t2, m2 = pad_prompts([prompt + [int(first)]], pad_token_id=0, buckets=[9])
  logits2, _ = models.forward(graphdef, params, jnp.asarray(t2), models.positions_from_mask(
      jnp.asarray(m2)), jnp.asarray(m2))
  probs1 = _filtered_probs(logits2[0, -1], settings)
  assert _chisquare(comp[comp[:, 0] == first, 1], probs1) > 1e-3
  # And a wrong reference (temperature 1, no filter) is rejected: the test has power.
  wrong = np.asarray(jax.nn.softmax(logits[0, -1]), np.float64)
  assert counts_reject(comp[:, 0], wrong)


def counts_reject(samples, probs):
  counts = np.bincount(samples, minlength=probs.shape[0])
  if counts[probs == 0].sum():
    return True
  return _chisquare(samples, probs) < 1e-3


def test_one_compile_per_shape_bucket(ckpts, monkeypatch):
  """Different prompts/lengths/keys in one bucket reuse one executable."""
  _, graphdef, params = models.load_hf(ckpts["qwen3"])
  traces = []
  real_step = sampler_lib.sample_step

  def counting_step(*a, **kw):  # runs only while tracing
    traces.append(1)
    return real_step(*a, **kw)

  monkeypatch.setattr(sampler_lib, "sample_step", counting_step)
  settings = SamplingSettings(max_new_tokens=5, group_size=2, stop_token_ids=(2,), top_k=7)
  size0 = sampler_lib._sample_jit._cache_size()
  outs = []
  batches = [[[5, 6, 7], [8], [9, 10]], [[9] * 11, [4] * 12, [3]],
             [[4, 5, 6, 7, 8, 9, 10], [11] * 9, [6, 5]]]
  for seed, prompts in enumerate(batches):
    tokens, mask = pad_prompts(prompts, pad_token_id=0, buckets=[12, 16])
    assert tokens.shape == (3, 12)
    outs.append(sample(graphdef, params, tokens, mask, jax.random.key(seed), settings))
    if seed == 0:
      traced = len(traces)
  assert traced == 2  # first token + decode loop body, traced once
  assert len(traces) == traced
  assert sampler_lib._sample_jit._cache_size() == size0 + 1
  assert not np.array_equal(outs[0].completion_tokens, outs[1].completion_tokens)


def test_pad_prompts_and_errors(ckpts):
  tokens, mask = pad_prompts([[1, 2, 3], [4]], pad_token_id=9, buckets=[2, 4, 8])
  np.testing.assert_array_equal(tokens, [[9, 1, 2, 3], [9, 9, 9, 4]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
  with pytest.raises(ValueError, match="largest bucket 8"):
    pad_prompts([[1] * 9], pad_token_id=0, buckets=[2, 4, 8])
  _, graphdef, params = models.load_hf(ckpts["qwen2"])
  with pytest.raises(ValueError, match="left-padded"):  # right-padded row 1
    sample(graphdef, params, jnp.asarray([[1, 2], [3, 0]]), jnp.asarray([[1, 1], [1, 0]]),
           jax.random.key(0), SamplingSettings())


def test_decode_completions_strips_end_and_pad(ckpts):
  tok = models.load_tokenizer(ckpts["qwen2"])
  hi = tok.encode("hi there", add_special_tokens=False)
  eos, pad = tok.eos_token_id, tok.pad_token_id
  c = len(hi) + 3
  rows = [hi + [eos] + [pad] * 2, (hi + hi)[:c]]
  comp = jnp.asarray(rows, jnp.int32)
  lengths = jnp.asarray([len(hi) + 1, c])
  mask = jnp.arange(c)[None] < lengths[:, None]
  r = Rollout(prompt_tokens=jnp.zeros((2, 1), jnp.int32), prompt_mask=jnp.ones((2, 1), bool),
              completion_tokens=comp, completion_mask=mask,
              sample_logprobs=jnp.zeros((2, c)), policy_logprobs=jnp.zeros((2, c)),
              group_ids=jnp.zeros(2, jnp.int32), truncated=jnp.asarray([False, True]),
              completion_lengths=lengths)
  assert decode_completions(tok, r) == ["hi there", tok.decode((hi + hi)[:c])]


def test_cli_greedy_matches_transformers(ckpts, capsys):
  from rlx import sample as cli

  texts = cli.main(["--checkpoint", ckpts["llama"], "--prompt", "Hello, world", "--greedy",
                    "--num_samples", "2", "--max_new_tokens", "12"])
  tok = models.load_tokenizer(ckpts["llama"])
  ids = np.asarray([tok.encode("Hello, world", add_special_tokens=False)])
  ref = hf_greedy(testing.load_torch_model(ckpts["llama"]), ids, np.ones_like(ids), 12,
                  eos=tok.eos_token_id)[0].tolist()
  ref = ref[:ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
  assert texts == [tok.decode(ref)] * 2
  assert texts[0] in capsys.readouterr().out


def _cached_logprobs(graphdef, params, r: Rollout):
  """Log-probs of the completion tokens from the model's own KV-cached forward
  (`models.forward` with a stacked cache: the prompt, then one token a step)."""
  cfg = models.config_of(graphdef, params)
  fwd = jax.jit(models.forward, static_argnums=0)
  tokens_NT, mask_NT = r.tokens, r.mask
  n, t = tokens_NT.shape
  p = r.prompt_tokens.shape[1]
  positions_NT = models.positions_from_mask(mask_NT)
  cache = models.init_cache(cfg, n, t)
  logits, cache = fwd(graphdef, params, tokens_NT[:, :p], positions_NT[:, :p], mask_NT,
                      cache=cache, cache_index=jnp.int32(0))
  steps = [logits[:, -1:]]
  for s in range(p, t - 1):
    logits, cache = fwd(graphdef, params, tokens_NT[:, s:s + 1], positions_NT[:, s:s + 1],
                        mask_NT, cache=cache, cache_index=jnp.int32(s))
    steps.append(logits)
  logp_NCV = jax.nn.log_softmax(jnp.concatenate(steps, axis=1), -1)
  logp_NC = jnp.take_along_axis(logp_NCV, r.completion_tokens[..., None], -1)[..., 0]
  return np.asarray(jnp.where(r.completion_mask, logp_NC, 0.0))


def test_bf16_sampler_logprobs_match_trainer(tmp_path):
  """bf16 params and compute: the sampler's policy_logprobs differ from the
  trainer's token_logprobs on the same tokens by no more than the model's own
  KV-cached forward differs from its full forward (the rounding of incremental
  decoding), because both are the same layer code."""
  d = testing.make_tiny_checkpoint(tmp_path / "qwen3", "qwen3", seed=3, tied=True)
  _, graphdef, params = models.load_hf(d, dtype="bfloat16", param_dtype="bfloat16")
  tokens, mask = testing.padded_batch(0, 3, 10)
  settings = SamplingSettings(max_new_tokens=24, group_size=4)
  r = sample(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
             settings)
  m = np.asarray(r.completion_mask)
  assert m.all()  # no stop tokens: every position is compared
  p = tokens.shape[1]
  train = np.asarray(models.token_logprobs(graphdef, params, r.tokens, r.mask)[0])[:, p:]
  cached = _cached_logprobs(graphdef, params, r)
  gap = np.abs(np.asarray(r.policy_logprobs) - train)[m]
  inherent = np.abs(cached - train)[m]
  # Plus float32 rounding of a log-softmax (the sampler's logsumexp is its own).
  atol = 8 * np.finfo(np.float32).eps * np.abs(train).max()
  assert gap.max() <= inherent.max() + atol, (gap.max(), inherent.max())
  assert gap.mean() <= inherent.mean() + atol, (gap.mean(), inherent.mean())
  # The test has power: bf16 moves the log-probs far more than the tolerance.
  _, g32, p32 = models.load_hf(d)
  train32 = np.asarray(models.token_logprobs(g32, p32, r.tokens, r.mask)[0])[:, p:]
  assert np.abs(train32 - train)[m].max() > 100 * (inherent.max() + atol)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_greedy_matches_transformers_with_blockwise_attention(ckpts, family):
  """attention=blockwise (blocks smaller than prefill and cache) keeps greedy parity."""
  c = 8
  hf = testing.load_torch_model(ckpts[family])
  cfg, _, params = models.load_hf(ckpts[family])
  _, graphdef = models.with_attention(cfg, attention="blockwise", attention_block_q=4,
                                      attention_block_kv=4)
  tokens, mask = testing.padded_batch(7, 3, 8)
  ref = hf_greedy(hf, tokens, mask, c, eos=None)
  settings = SamplingSettings(max_new_tokens=c, greedy=True, group_size=1, pad_token_id=0)
  r = sample(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
             settings)
  np.testing.assert_array_equal(np.asarray(r.completion_tokens), ref)
