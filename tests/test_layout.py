"""No compute on padding: trimmed and packed batches give the padded batch's
loss, metrics and gradients (to 1e-5, fp32), and warm buckets do not recompile."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlx import models, sampling
from rlx.train import layout, rl, rl_setup, steps
from rlx.train.config import base_config, validate
from rlx.train.placement import Placement

P, C = 12, 40                       # padded prompt / completion columns
PROMPT_N = np.array([3, 5, 2, 7, 4, 6])
COMPLETION_N = np.array([5, 17, 1, 9, 12, 3])  # longest 17 -> bucket 24; prompts 7 -> 8
N = len(PROMPT_N)
TERMS = {  # every aggregation, KL, entropy, NLL anchor and DRPO (length-normalized ones too)
    "pg": {"aggregation": "token_mean"},                          # DAPO
    "pg_dr": {"term": "pg", "aggregation": "constant"},           # Dr. GRPO: 1 / (N * max_len)
    "pg_seq": {"term": "pg", "aggregation": "seq_mean_token_mean"},
    "pg_sum": {"term": "pg", "aggregation": "seq_mean_token_sum"},
    "kl": {"coef": 0.04, "estimator": "k3"},
    "entropy": {"coef": 0.01},
    "nll_correct": {"coef": 0.1},
    "drpo": {"coef": 0.5},
}


def _model(attention="dense"):
  cfg = models.ModelConfig.from_hf(dict(
      model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=64, hidden_size=32,
      intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=128, tie_word_embeddings=False))
  _, params = models.init_model(cfg, jax.random.PRNGKey(0))
  _, graphdef = models.with_attention(cfg, attention=attention, attention_block_q=8,
                                      attention_block_kv=8)
  return graphdef, params


def _rollout(prompt_N=PROMPT_N, completion_N=COMPLETION_N, seed=0, shared=False
             ) -> sampling.Rollout:
  """shared: rows in groups of 3 with one prompt each (prompt_N[0] and [3])."""
  rng = np.random.default_rng(seed)
  n = len(prompt_N)
  if shared:
    prompt_N = np.repeat(np.asarray(prompt_N)[::3], 3)
  pmask = np.arange(P)[None] >= P - np.asarray(prompt_N)[:, None]      # left-padded
  cmask = np.arange(C)[None] < np.asarray(completion_N)[:, None]       # right-padded
  ptok = rng.integers(2, 64, (n, P))
  if shared:
    ptok = np.repeat(ptok[::3], 3, axis=0)
  ptok = np.where(pmask, ptok, 0).astype(np.int32)
  ctok = np.where(cmask, rng.integers(2, 64, (n, C)), 0).astype(np.int32)
  logp = lambda: np.where(cmask, -rng.uniform(0.5, 5.0, (n, C)), 0.0).astype(np.float32)
  return sampling.Rollout(
      prompt_tokens=jnp.asarray(ptok), prompt_mask=jnp.asarray(pmask),
      completion_tokens=jnp.asarray(ctok), completion_mask=jnp.asarray(cmask),
      sample_logprobs=jnp.asarray(logp()), policy_logprobs=jnp.asarray(logp()),
      group_ids=jnp.arange(n, dtype=jnp.int32) // 3, truncated=jnp.zeros(n, bool),
      completion_lengths=jnp.asarray(completion_N, jnp.int32))


def _run(graphdef, *, packing=False, prompt_buckets=(4, 8)):
  cfg = base_config()
  cfg.data.max_prompt_len, cfg.sampling.max_new_tokens = P, C
  cfg.train.prompt_buckets, cfg.train.packing = prompt_buckets, packing
  cfg.sampling.group_size = 3
  return SimpleNamespace(cfg=cfg, place=Placement(cfg), group_size=3, fns=SimpleNamespace(
      logprobs=steps.make_logprobs_fn(graphdef, P, 1.0, 0)))


def _batch(ro: sampling.Rollout, ref_NC, adv) -> dict:
  """The update batch of rl.update_batch (valid rows all but the last)."""
  rng = np.random.default_rng(1)
  n, c = ro.completion_mask.shape
  valid = np.arange(n) < n - 1
  return dict(tokens=ro.tokens, attn_mask=ro.mask,
              loss_mask=(ro.completion_mask & valid[:, None]).astype(jnp.float32),
              adv=adv if adv.ndim == 1 else adv[:, :c], old_logp=ro.policy_logprobs,
              sample_logp=ro.sample_logprobs, ref_logp=ref_NC,
              correct=jnp.asarray(rng.random(n) < 0.5), group=ro.group_ids,
              lengths=ro.completion_lengths)


def test_length_buckets_defaults_and_errors():
  assert layout.length_buckets((), 1024, "x") == (16, 24, 32, 48, 64, 96, 128, 192, 256, 384,
                                                  512, 768, 1024)
  assert layout.length_buckets((), 40, "x") == (16, 24, 32, 40)
  assert layout.length_buckets((), 12, "x") == (12,)
  assert layout.length_buckets((64, 8), 100, "x") == (8, 64, 100)
  assert layout.bucket(17, (16, 32, 40)) == 32
  assert layout.row_buckets(6) == (1, 2, 3, 4, 6) and layout.row_buckets(6, 4) == (4, 8)
  assert layout.row_buckets(64) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
  c = base_config()
  c.model.init = "random"
  c.train.length_buckets = (0, 64)
  with pytest.raises(ValueError, match=r"config.train.length_buckets=\(0, 64\): bucket 0 is "
                     r"outside \[1, 64\]"):
    validate(c)
  c.train.length_buckets = ()
  c.sampling.tail_rows = 3  # reaches the sampler's settings, the eval's too
  tok = SimpleNamespace(eos_token_id=1, pad_token_id=0)
  assert rl_setup._settings(c, eval_mode=False, tokenizer=tok).tail_rows == 3
  assert rl_setup._settings(c, eval_mode=True, tokenizer=tok).tail_rows == 3
  c.sampling.tail_rows = c.train.batch_prompts * c.sampling.group_size
  with pytest.raises(ValueError, match=r"config.sampling.tail_rows=\d+ must be 0 \(off\) or "
                     r"in 1..\d+ \(fewer than the \d+ completions per step\)"):
    validate(c)


def test_pack_places_every_sequence_once_in_its_own_segment():
  trim = layout.Trim(8, 32)
  pk = layout.pack(PROMPT_N, COMPLETION_N, trim, layout.row_buckets(N))
  src, seg, unpack = pk["pack_src"], pk["pack_seg"], pk["unpack"]
  assert src.shape == (2, 40)  # 72 tokens in 2 rows of 40 (first-fit decreasing)
  live = src >= 0
  assert sorted(src[live].tolist()) == sorted(
      i * 40 + 8 - p + j for i, (p, c) in enumerate(zip(PROMPT_N, COMPLETION_N))
      for j in range(p + c))
  for i, (p, c) in enumerate(zip(PROMPT_N, COMPLETION_N)):
    slots = np.flatnonzero(src.reshape(-1) // 40 == i)
    assert np.all(np.diff(slots) == 1) and len(np.unique(seg.reshape(-1)[slots])) == 1
    np.testing.assert_array_equal(src.reshape(-1)[unpack[i, :c]], i * 40 + 8 + np.arange(c))
    assert np.all(unpack[i, c:] == 0)


@pytest.mark.parametrize("attention,token_adv,packing,shared", [
    ("dense", False, False, False), ("blockwise", True, True, False),
    ("blockwise", True, False, True)])
def test_trimmed_and_packed_loss_and_grads_equal_padded(attention, token_adv, packing, shared):
  """shared: groups of 3 rows with one prompt, run once per group (train.share_prompts)."""
  graphdef, params = _model(attention)
  ro = _rollout(shared=shared)
  rng = np.random.default_rng(2)
  adv = jnp.asarray(rng.standard_normal((N, C) if token_adv else N), jnp.float32)
  ref_full = steps.make_logprobs_fn(graphdef, P, 1.0, 0)(
      jax.tree.map(lambda x: x * 1.01, params), ro.tokens, ro.mask)[0]
  loss_fn = steps.make_loss_fn(graphdef, TERMS, temperature=1.0, chunk=0, detached_old=False,
                               max_len=C, num_groups=2)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss0, m0), g0 = grad_fn(params, _batch(ro, ref_full, adv))
  run = _run(graphdef, packing=packing)
  t = rl.trimmed(run, ro, jax.tree.map(np.asarray, ro))
  assert t.trim == layout.Trim(8, 24) and t.group_size == (3 if shared else 1)
  # the reference pass itself runs trimmed (and packed) and equals the padded one
  ref = rl.device_logprobs(run, jax.tree.map(lambda x: x * 1.01, params), t)
  assert ref.shape == (N, 24)
  np.testing.assert_allclose(ref, ref_full[:, :24], atol=1e-5)
  batch = _batch(t.rollout, ref, adv)
  assert batch["tokens"].shape == (N, 32)
  if packing:
    batch.update(rl.packing(run, PROMPT_N, COMPLETION_N, t.trim))
    assert batch["pack_src"].shape == (3, 32)  # 6 rows of 32 -> 3
  (loss, m), g = jax.jit(jax.value_and_grad(
      lambda p, b: loss_fn(p, b, group_size=t.group_size), has_aux=True))(params, batch)
  np.testing.assert_allclose(loss, loss0, rtol=1e-5, atol=1e-6)
  for k in m0:
    np.testing.assert_allclose(m[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):  # DRPO's gradients reach ~50
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max()), a.shape


def test_packed_pass_with_long_prompts_scores_completion_slots_only():
  """Fewer completion entries [N, C'] than packed slots (long prompts, short
  completions): the packed pass runs the LM head on the completion slots alone
  (token_logprobs' targets_at) and still equals the unpacked pass, values and gradients."""
  graphdef, params = _model()
  completion_N = np.array([1, 2, 1, 3, 2, 1])
  ro = _rollout(completion_N=completion_N)
  trim = layout.Trim(8, 4)
  cols = lambda p, c: jnp.concatenate([p[:, P - 8:], c[:, :4]], axis=1)
  tokens = cols(ro.prompt_tokens, ro.completion_tokens)
  mask = cols(ro.prompt_mask, ro.completion_mask)
  pk = {k: jnp.asarray(v) for k, v in layout.pack(PROMPT_N, completion_N, trim,
                                                   layout.row_buckets(N)).items()}
  assert pk["pack_src"].shape == (4, 12) and pk["unpack"].size < pk["pack_src"].size
  w = jnp.asarray(np.random.default_rng(3).standard_normal((N, 4)), jnp.float32)

  def loss(params, packing):
    logp, ent = steps.completion_logprobs(graphdef, params, tokens, mask, 4, temperature=0.9,
                                          chunk=3, packing=packing)
    return jnp.sum(w * logp + 0.1 * ent), (logp, ent)
  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (l0, (lp0, e0)), g0 = grad(params, None)
  (l1, (lp1, e1)), g1 = grad(params, pk)
  assert np.count_nonzero(lp0) == completion_N.sum()
  np.testing.assert_allclose(lp1, lp0, atol=1e-5)
  np.testing.assert_allclose(e1, e0, atol=1e-5)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_warm_buckets_do_not_recompile():
  """Steps whose lengths differ but fall in the same buckets reuse the compiled
  log-prob and update functions (jit cache sizes stay put)."""
  graphdef, params0 = _model()
  tx = optax.sgd(1e-3)
  for packing in (False, True):
    run = _run(graphdef, packing=packing)
    place = run.place  # as in rlx/train/rl_setup.py: the state keeps its layout
    params = place.put_params(jax.tree.map(jnp.copy, params0))  # the update donates it
    state = steps.TrainState(step=place.replicated(np.zeros((), np.int32)), params=params,
                             opt_state=place.init_opt_state(tx, params,
                                                            place.param_shardings(params)),
                             skipped=place.replicated(np.zeros((), np.int32)))
    update = steps.make_update_fn(graphdef, tx, {"pg": {}, "kl": {"coef": 0.04}},
                                  temperature=1.0, chunk=0, detached_old=True, max_len=C,
                                  num_groups=2,
                                  state_shardings=jax.tree.map(lambda x: x.sharding, state))
    sizes = []
    # The first update's output state has the pinned shardings in XLA's normal
    # form (P() on this 1-device mesh), so the second step compiles once more
    # whatever the lengths: the counts are compared from the second step on.
    for seed, (prompt_N, completion_N) in enumerate([
        ([3, 5, 2, 7, 4, 6], [5, 17, 1, 9, 12, 3]),   # buckets 8, 24; packed in 3 rows
        ([3, 5, 2, 7, 4, 6], [5, 17, 1, 9, 12, 3]),
        ([8, 1, 6, 2, 5, 5], [20, 2, 14, 4, 1, 6]),   # the same buckets, other lengths
        ([3, 1, 2, 4, 2, 3], [5, 3, 1, 9, 12, 3])]):  # 4, 16: a new bucket compiles once
      local = jax.tree.map(np.asarray, _rollout(np.asarray(prompt_N), np.asarray(completion_N),
                                                seed))
      t = rl.trimmed(run, place.to_global(local, N), local)
      ref = rl.device_logprobs(run, state.params, t)
      batch = _batch(t.rollout, ref, jnp.ones((N,), jnp.float32))
      if packing:
        batch.update(rl.packing(run, t.prompt_len_N, t.completion_len_N, t.trim))
      state, _ = update(state, batch)
      sizes.append((run.fns.logprobs._cache_size(), update._cache_size()))
    assert sizes[1] == sizes[2], sizes  # same buckets, other lengths: no compile
    assert sizes[3] == (sizes[2][0] + 1, sizes[2][1] + 1), sizes  # one more compile each


def test_shared_prompts_only_when_every_group_holds_one_prompt():
  graphdef, _ = _model()
  run = _run(graphdef)
  local = jax.tree.map(np.asarray, _rollout(shared=True))
  assert rl.shared_group_size(run, local) == 3
  tokens = local.prompt_tokens.copy()
  tokens[4, -1] += 1  # one completion's prompt differs from its group's
  assert rl.shared_group_size(run, local.replace(prompt_tokens=tokens)) == 1
  run.cfg.train.share_prompts = False
  assert rl.shared_group_size(run, local) == 1
  run.cfg.train.share_prompts, run.cfg.train.packing = True, True
  assert rl.shared_group_size(run, local) == 1
