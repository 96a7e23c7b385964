"""Chunked token log-probs / entropies: vs transformers, vs unchunked, gradients, memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx import testing
from rlx.models import positions_from_mask, token_logprobs
from rlx.models.hf_io import load_hf
from rlx.models.logprobs import logprobs_from_logits, unchunked_token_logprobs

torch = pytest.importorskip("torch")

B, T = 3, 13


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  d = testing.make_tiny_checkpoint(tmp_path_factory.mktemp("lp"), "llama", tied=False)
  cfg, graphdef, params = load_hf(d)
  return d, graphdef, params


def _batch():
  tokens, mask = testing.padded_batch(11, B, T, side="left")
  mask[2, -3:] = False  # also right padding on one row
  tokens[2, -3:] = 0
  return tokens, mask


def test_matches_transformers_log_softmax(model):
  d, graphdef, params = model
  tokens, mask = _batch()
  logits = testing.torch_logits(testing.load_torch_model(d), tokens, mask,
                                positions_from_mask(mask))
  for temp in (1.0, 0.7):
    logp_ref = torch.log_softmax(torch.tensor(logits) / temp, -1).numpy()
    tgt = np.take_along_axis(logp_ref[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    ent = -(np.exp(logp_ref) * logp_ref).sum(-1)[:, :-1]
    valid = mask[:, 1:] & mask[:, :-1]
    logp, entropy = jax.jit(token_logprobs, static_argnums=0, static_argnames="chunk_size")(
        graphdef, params, tokens, mask, chunk_size=5, temperature=temp)
    logp, entropy = np.asarray(logp), np.asarray(entropy)
    assert logp.shape == entropy.shape == (B, T)
    np.testing.assert_allclose(logp[:, 1:][valid], tgt[valid], atol=1e-4)
    np.testing.assert_allclose(entropy[:, 1:][valid], ent[valid], atol=1e-4)
    # Position 0, padding and the first real token of a left-padded row get 0.
    assert np.all(logp[:, 0] == 0) and np.all(logp[:, 1:][~valid] == 0)
    assert np.all(entropy[:, 1:][~valid] == 0)
    assert logp[1, ~mask[1]].size and np.all(logp[1, np.argmax(mask[1])] == 0)


def test_chunked_equals_unchunked(model):
  _, graphdef, params = model
  tokens, mask = _batch()
  fn = jax.jit(token_logprobs, static_argnums=0, static_argnames="chunk_size")
  b = jax.jit(unchunked_token_logprobs, static_argnums=0)(graphdef, params, tokens, mask,
                                                          temperature=0.9)
  for chunk_size in (3, 64):  # 3 does not divide T (padded chunks); 64 > T
    a = fn(graphdef, params, tokens, mask, chunk_size=chunk_size, temperature=0.9)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5, rtol=0)


def _loss(fn, graphdef):
  def loss(params, tokens, mask):
    logp, ent = fn(graphdef, params, tokens, mask)
    return jnp.sum(logp * mask) + 0.1 * jnp.sum(ent)
  return loss


def test_gradients_match_unchunked(model):
  """Chunked + per-layer remat gradients equal plain unchunked gradients."""
  _, graphdef, params = model
  tokens, mask = _batch()
  chunked = lambda g, p, t, m: token_logprobs(g, p, t, m, chunk_size=4, remat=True)
  ga = jax.jit(jax.grad(_loss(chunked, graphdef)))(params, tokens, mask)
  gb = jax.jit(jax.grad(_loss(unchunked_token_logprobs, graphdef)))(params, tokens, mask)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  assert float(jnp.abs(ga["lm_head"][...]).max()) > 1e-3
  assert float(jnp.abs(ga["layers"]["q"][...]).max()) > 1e-4


def test_targets_at_equals_gathered_entries(model):
  """token_logprobs(targets_at=idx) = the full result's flat entries idx, values and
  gradients, with segments (packed rows), padding, row starts and repeated indices;
  its head runs on len(idx) positions only."""
  _, graphdef, params = model
  tokens, mask = _batch()
  seg = np.zeros((B, T), np.int32)
  seg[:, 7:] = 1  # two sequences per row: entry 7 (a segment's first token) is 0
  pos = np.where(np.arange(T) < 7, positions_from_mask(mask), np.arange(T) - 7)
  idx = np.array([[1, 2, 5, 7], [8, 0, 12, T + 11], [25, 25, T, 2 * T + 5]], np.int32)
  kw = dict(positions_BT=jnp.asarray(pos), segment_ids_BT=jnp.asarray(seg), chunk_size=3)
  full = lambda p: token_logprobs(graphdef, p, tokens, mask, **kw)
  at = lambda p: token_logprobs(graphdef, p, tokens, mask, targets_at=jnp.asarray(idx), **kw)
  (fa, fe), (aa, ae) = jax.jit(full)(params), jax.jit(at)(params)
  assert aa.shape == ae.shape == idx.shape
  np.testing.assert_allclose(aa, np.asarray(fa).reshape(-1)[idx], atol=1e-6)
  np.testing.assert_allclose(ae, np.asarray(fe).reshape(-1)[idx], atol=1e-6)
  assert np.all(np.asarray(aa)[idx % T == 0] == 0) and np.all(np.asarray(aa)[idx % T == 7] == 0)
  assert np.count_nonzero(np.asarray(aa)) == 8  # row 1 is real from t = 10, row 2 not at all
  flat = token_logprobs(graphdef, params, tokens, mask, targets_at=jnp.asarray(idx[1:].ravel()),
                        **kw)[0]  # 1-D, 8 targets over B = 3 rows (K = 3, one padded)
  np.testing.assert_allclose(flat, np.asarray(aa)[1:].ravel(), atol=1e-6)
  w = jnp.asarray(np.random.default_rng(0).standard_normal(idx.shape), jnp.float32)
  loss_full = lambda p: jnp.sum(w * full(p)[0].reshape(-1)[idx] + 0.1 * full(p)[1].reshape(-1)[idx])
  loss_at = lambda p: jnp.sum(w * at(p)[0] + 0.1 * at(p)[1])
  ga, gb = jax.jit(jax.grad(loss_at))(params), jax.jit(jax.grad(loss_full))(params)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
  assert float(jnp.abs(ga["lm_head"][...]).max()) > 1e-3
  # one chunk: the head's logits have idx.size rows with targets_at, B * (T - 1) without
  V, kw["chunk_size"] = params["lm_head"][...].shape[-1], 64
  jaxpr = lambda **a: jax.make_jaxpr(
      lambda p: token_logprobs(graphdef, p, tokens, mask, **kw, **a))(params).jaxpr
  assert not _has_full_logits(jaxpr(targets_at=jnp.asarray(idx)), V, max_rows=idx.size)
  assert _has_full_logits(jaxpr(), V, max_rows=idx.size)


def _has_full_logits(jaxpr, V: int, max_rows: int) -> bool:
  """Whether any equation in jaxpr (recursively) makes logits-like arrays [..., V]
  with more than max_rows rows in total (e.g. [B, T, V] or stacked [n, B, C, V])."""
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      shape = getattr(v.aval, "shape", ())
      if len(shape) >= 3 and shape[-1] == V and np.prod(shape[:-1]) > max_rows:
        return True
    for p in eqn.params.values():
      for j in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(j, "jaxpr", j)
        if hasattr(inner, "eqns") and _has_full_logits(inner, V, max_rows):
          return True
  return False


def test_no_full_logits_in_forward_or_backward(model):
  _, graphdef, params = model
  tokens, mask = _batch()
  V, C = params["lm_head"].shape[1], 4

  def jaxpr_of(fn):
    return jax.make_jaxpr(jax.value_and_grad(_loss(fn, graphdef)))(params, tokens, mask).jaxpr

  chunked = lambda g, p, t, m: token_logprobs(g, p, t, m, chunk_size=C)
  assert not _has_full_logits(jaxpr_of(chunked), V, B * C)
  # The detector sees the full logits of the unchunked version, and the stacked
  # per-chunk logits the backward pass would keep without jax.checkpoint.
  assert _has_full_logits(jaxpr_of(unchunked_token_logprobs), V, B * C)
  no_ckpt = lambda g, p, t, m: token_logprobs(g, p, t, m, chunk_size=C, checkpoint_chunks=False)
  assert _has_full_logits(jaxpr_of(no_ckpt), V, B * C)


def test_logprobs_from_logits_closed_form():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
  logp, ent = logprobs_from_logits(logits, jnp.array([[1]]))
  np.testing.assert_allclose(logp, [[np.log(0.25)]], rtol=1e-6)
  np.testing.assert_allclose(ent, [[1.5 * np.log(2)]], rtol=1e-6)
  # Temperature -> infinity: uniform; entropy log 3.
  _, ent = logprobs_from_logits(logits, jnp.array([[1]]), temperature=1e6)
  np.testing.assert_allclose(ent, [[np.log(3)]], rtol=1e-5)


def test_shared_prompt_logprobs_and_grads_equal_unshared():
  """completion_logprobs with group_size G (each group's prompt runs once, its keys and
  values shared; train.share_prompts) = G 1 = token_logprobs' last C columns, on values,
  entropies and gradients: left-padded prompts, right-padded completions, GQA, q/k
  norm, tied head, remat, blockwise attention with blocks that cut the prefix."""
  from rlx import models
  from rlx.models.logprobs import completion_logprobs
  cfg = models.ModelConfig.from_hf(dict(
      model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=64, hidden_size=32,
      intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
      head_dim=8, max_position_embeddings=128, tie_word_embeddings=True))
  _, params = models.init_model(cfg, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
                        params)
  _, gd = models.with_attention(cfg, attention="blockwise", attention_block_q=4,
                                attention_block_kv=4)
  P, C, U, G = 9, 7, 3, 4
  rng = np.random.default_rng(0)
  pmask = np.repeat(np.arange(P)[None] >= P - np.array([3, 9, 6])[:, None], G, 0)
  ptok = np.repeat(rng.integers(2, 64, (U, P)), G, 0) * pmask
  cmask = np.arange(C)[None] < rng.integers(1, C + 1, U * G)[:, None]
  tokens = np.concatenate([ptok, rng.integers(2, 64, (U * G, C)) * cmask], 1).astype(np.int32)
  mask = np.concatenate([pmask, cmask], 1)
  adv = rng.standard_normal((U * G, C)).astype(np.float32)

  @jax.jit
  def run(p):
    def loss(p, g):
      logp, ent = completion_logprobs(gd, p, tokens, mask, C, group_size=g, chunk_size=3,
                                      remat="full")
      return jnp.sum(logp * adv) + 0.1 * jnp.sum(ent), (logp, ent)
    one = jax.value_and_grad(loss, has_aux=True)(p, 1)
    shared = jax.value_and_grad(loss, has_aux=True)(p, G)
    return one, shared, token_logprobs(gd, p, tokens, mask)[0][:, -C:]
  ((l1, (lp1, e1)), g1), ((lg, (lpg, eg)), gg), full = run(params)
  np.testing.assert_allclose(lp1, full, atol=1e-5)
  np.testing.assert_allclose(lpg, lp1, atol=1e-5)
  np.testing.assert_allclose(eg, e1, atol=1e-5)
  assert np.all(lpg[~cmask] == 0) and np.abs(lpg[cmask]).min() > 0
  np.testing.assert_allclose(lg, l1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gg), jax.tree.leaves(g1)):
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max()), a.shape

  # The decoder's prefix also runs with per-layer params (the sampler's layout).
  @jax.jit
  def forwards(p):
    positions = models.positions_from_mask(mask)
    _, kv = models.forward(gd, p, tokens[::G, :P], positions[::G, :P], mask[::G, :P],
                           return_hidden=True, return_kv=True)
    tail = (tokens[:, P:], positions[:, P:], mask)
    return (models.forward(gd, p, *tail, prefix=kv)[0],
            models.forward(gd, p, *tail, prefix=kv, layers=models.unstack_layers(cfg, p))[0],
            models.forward(gd, p, tokens, positions, mask)[0][:, P:], kv)
  a, b, ref, kv = forwards(params)
  live = mask[:, P:]
  np.testing.assert_allclose(np.asarray(a)[live], np.asarray(ref)[live], atol=1e-5)
  np.testing.assert_allclose(np.asarray(b)[live], np.asarray(ref)[live], atol=1e-5)
  with pytest.raises(ValueError, match="multiple of 3"):
    models.forward(gd, params, tokens[:4, P:], tokens[:4, P:], mask[:4], prefix=kv)
