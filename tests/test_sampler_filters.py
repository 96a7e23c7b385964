"""Sampling filters and the sampling step, against transformers' logits warpers."""
import hypothesis
import hypothesis.strategies as st
from hyp import examples
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from transformers.generation import logits_process as hf_lp

from rlx.sampling import filters
from rlx.sampling.step import SamplingSettings, categorical, sample_step


def hf_filter(logits_NV: np.ndarray, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
  """transformers' warpers in generate's order (temperature, top-k, top-p, min-p)."""
  x = torch.tensor(np.asarray(logits_NV, np.float32))
  ids = torch.zeros((x.shape[0], 1), dtype=torch.long)
  if temperature != 1.0:
    x = hf_lp.TemperatureLogitsWarper(temperature)(ids, x)
  if top_k > 0:
    x = hf_lp.TopKLogitsWarper(top_k)(ids, x)
  if top_p < 1.0:
    x = hf_lp.TopPLogitsWarper(top_p)(ids, x)
  if min_p > 0.0:
    x = hf_lp.MinPLogitsWarper(min_p)(ids, x)
  return x.numpy()


def kept(x):
  return np.isfinite(np.asarray(x))


@hypothesis.settings(max_examples=examples(40))
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1),
    temperature=st.sampled_from([0.3, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 17, 64]),
    top_p=st.sampled_from([0.05, 0.5, 0.9, 1.0]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_filter_logits_matches_transformers_warpers(seed, temperature, top_k, top_p, min_p):
  logits = np.random.default_rng(seed).normal(size=(4, 64)).astype(np.float32) * 3
  ours = np.asarray(filters.filter_logits(
      jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p))
  ref = hf_filter(logits, temperature, top_k, top_p, min_p)
  np.testing.assert_array_equal(kept(ours), kept(ref))
  np.testing.assert_allclose(ours[kept(ours)], ref[kept(ref)], rtol=1e-6)
  assert kept(ours).any(axis=-1).all()


def test_top_p_keeps_smallest_prefix_with_enough_mass():
  # probs 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps exactly the first two (0.5 + 0.3 >= 0.8).
  logits = jnp.log(jnp.array([[0.15, 0.5, 0.05, 0.3]]))
  np.testing.assert_array_equal(kept(filters.top_p_filter(logits, 0.8)), [[False, True, False, True]])
  np.testing.assert_array_equal(kept(filters.top_p_filter(logits, 0.81)), [[True, True, False, True]])
  np.testing.assert_array_equal(kept(filters.top_p_filter(logits, 0.01)), [[False, True, False, False]])
  # Within top-k = 3 the renormalised probs are 0.5/0.95, 0.3/0.95, 0.15/0.95.
  np.testing.assert_array_equal(kept(filters.top_k_top_p_filter(logits, 3, 0.84)),
                                [[False, True, False, True]])
  np.testing.assert_array_equal(kept(filters.top_k_top_p_filter(logits, 3, 0.85)),
                                [[True, True, False, True]])


def test_min_p_and_top_k_closed_form():
  logits = jnp.log(jnp.array([[0.4, 0.1, 0.3, 0.2]]))
  # min_p 0.5: threshold 0.2 (prob 0.2 itself is kept: strict <).
  np.testing.assert_array_equal(kept(filters.min_p_filter(logits, 0.5)), [[True, False, True, True]])
  np.testing.assert_array_equal(kept(filters.top_k_filter(logits, 2)), [[True, False, True, False]])


def test_token_logprob_is_log_softmax_entry():
  logits = jax.random.normal(jax.random.key(0), (3, 11)) * 4
  toks = jnp.array([0, 5, 10])
  ref = jax.nn.log_softmax(logits, -1)[jnp.arange(3), toks]
  np.testing.assert_allclose(filters.token_logprob(logits, toks), ref, rtol=1e-6, atol=1e-6)


def test_settings_validation_and_hashing():
  s = SamplingSettings(max_new_tokens=4, stop_token_ids=[3, 5])
  assert s.stop_token_ids == (3, 5)
  assert hash(s) == hash(SamplingSettings(max_new_tokens=4, stop_token_ids=(3, 5)))
  for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1), dict(min_p=1.5),
              dict(max_new_tokens=0), dict(group_size=0)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      SamplingSettings(**bad)


def _chisquare_pvalue(tokens: np.ndarray, probs: np.ndarray) -> float:
  counts = np.bincount(tokens, minlength=probs.shape[0])
  assert counts[probs == 0].sum() == 0, "sampled a filtered-out token"
  support = probs > 0
  expected = probs[support] / probs[support].sum() * counts.sum()
  assert expected.min() >= 5, expected.min()  # validity of the chi-square approximation
  return scipy.stats.chisquare(counts[support], expected).pvalue


@pytest.mark.parametrize("settings", [
    SamplingSettings(),
    SamplingSettings(temperature=0.7, top_k=12, top_p=0.9, min_p=0.02),
    SamplingSettings(temperature=1.3, top_p=0.8),
    SamplingSettings(min_p=0.1),
])
def test_sample_step_distribution_chisquare(settings):
  """Empirical token frequencies vs softmax of transformers-filtered logits."""
  v, n = 24, 20000
  logits_V = np.random.default_rng(1).normal(size=v).astype(np.float32) * 1.5
  tokens, slogp, plogp = jax.jit(sample_step, static_argnums=2)(
      jnp.broadcast_to(jnp.asarray(logits_V), (n, v)), jax.random.key(0), settings)
  ref = hf_filter(logits_V[None], settings.temperature, settings.top_k, settings.top_p,
                  settings.min_p)[0].astype(np.float64)
  probs = np.exp(ref - ref.max())
  probs /= probs.sum()
  assert _chisquare_pvalue(np.asarray(tokens), probs) > 1e-3
  tokens = np.asarray(tokens)
  np.testing.assert_allclose(np.asarray(slogp), np.log(probs[tokens]), rtol=1e-5, atol=1e-5)
  raw = logits_V.astype(np.float64) - np.log(np.exp(logits_V.astype(np.float64)).sum())
  np.testing.assert_allclose(np.asarray(plogp), raw[tokens], rtol=1e-5, atol=1e-5)


def test_categorical_never_draws_masked_tokens_and_greedy_is_argmax():
  logits = jnp.array([[-jnp.inf, 0.0, -jnp.inf, 1.0, -jnp.inf]] * 4000)
  toks = np.asarray(categorical(jax.random.key(3), logits))
  assert set(np.unique(toks)) == {1, 3}
  frac = (toks == 3).mean()
  assert abs(frac - 1 / (1 + np.exp(-1.0))) < 0.03
  x = jax.random.normal(jax.random.key(4), (5, 9))
  g, slogp, plogp = sample_step(x, jax.random.key(0), SamplingSettings(greedy=True, temperature=0.5))
  np.testing.assert_array_equal(g, jnp.argmax(x, -1))
  np.testing.assert_allclose(plogp, jnp.max(jax.nn.log_softmax(x), -1), rtol=1e-6)
  np.testing.assert_allclose(slogp, jnp.max(jax.nn.log_softmax(x / 0.5), -1), rtol=1e-6)
