"""rlx.models.attention: every implementation equals a float64 reference / dense."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from rlx.models import attention as attn
from rlx.models.attention import attention

H, J, E = 4, 2, 16  # GQA: 2 query heads per KV head


def _qkv(B, T, S, seed=0, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (B, T, H, E), dtype), jax.random.normal(kk, (B, S, J, E), dtype),
          jax.random.normal(kv, (B, S, J, E), dtype))


def _reference(q, k, v, causal=True, q_offset=0, kv_mask=None, q_seg=None, kv_seg=None):
  """Per-head softmax attention in float64 numpy; rows that see no key are 0."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, Hq, Eq = q.shape
  S = k.shape[1]
  vis = np.ones((B, T, S), bool)
  if causal:
    vis &= np.arange(S)[None, None] <= (q_offset + np.arange(T))[None, :, None]
  if kv_mask is not None:
    vis &= np.asarray(kv_mask, bool)[:, None, :]
  if q_seg is not None:
    vis &= np.asarray(q_seg)[:, :, None] == np.asarray(kv_seg)[:, None, :]
  out = np.zeros_like(q)
  for h in range(Hq):
    s = np.einsum("bte,bse->bts", q[:, :, h], k[:, :, h // (Hq // k.shape[2])]) / np.sqrt(Eq)
    s = np.where(vis, s, -np.inf)
    mx = np.max(np.where(vis, s, -1e300), axis=-1, keepdims=True)
    p = np.where(vis, np.exp(s - mx), 0.0)
    den = p.sum(-1, keepdims=True)
    p = np.where(den > 0, p / np.where(den > 0, den, 1.0), 0.0)
    out[:, :, h] = np.einsum("bts,bse->bte", p, v[:, :, h // (Hq // k.shape[2])])
  return out, vis.any(-1)


def _left_pad_mask(B, S, pads):
  return jnp.arange(S)[None, :] >= jnp.asarray(pads)[:, None]


def _packed_segments(B, T, cuts):
  """Segment ids [B, T]: row b starts a new segment at each position in cuts[b]."""
  return jnp.asarray([np.searchsorted(np.asarray(c), np.arange(T), side="right") for c in cuts],
                     jnp.int32)


CASES = {  # name: (B, T, S, kwargs builder, block_q, block_kv)
    "causal": (2, 64, 64, lambda B, T, S: {}, 16, 32),
    "left_pad": (3, 64, 64, lambda B, T, S: {"kv_mask_BS": _left_pad_mask(B, S, [0, 7, 40])},
                 32, 16),
    "packed": (2, 64, 64, lambda B, T, S: {
        "kv_mask_BS": _left_pad_mask(B, S, [0, 5]),
        "q_segment_ids_BT": _packed_segments(B, T, [[20, 45], [33]]),
        "kv_segment_ids_BS": _packed_segments(B, S, [[20, 45], [33]])}, 16, 16),
    "bidirectional": (2, 32, 48, lambda B, T, S: {
        "causal": False, "kv_mask_BS": _left_pad_mask(B, S, [3, 0])}, 16, 16),
    "prefill_chunk": (2, 16, 64, lambda B, T, S: {
        "q_offset": 24, "kv_mask_BS": _left_pad_mask(B, S, [0, 9])}, 8, 16),
    "decode_traced_offset": (2, 1, 96, lambda B, T, S: {
        "q_offset": jnp.int32(50),
        "kv_mask_BS": _left_pad_mask(B, S, [4, 30]) & (jnp.arange(S) <= 50)[None]}, 512, 32),
    "blocks_capped": (1, 24, 24, lambda B, T, S: {}, 512, 512),
}


def _run(impl, q, k, v, kw, bq, bk, **extra):
  f = lambda q, k, v: attention(q, k, v, impl=impl, block_q=bq, block_kv=bk, **kw, **extra)
  w = jax.random.normal(jax.random.PRNGKey(7), q.shape)
  loss = lambda q, k, v: jnp.sum(f(q, k, v) * w)
  out = f(q, k, v)
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  return out, grads


def _ref_kwargs(kw):
  return dict(causal=kw.get("causal", True), q_offset=int(kw.get("q_offset", 0)),
              kv_mask=kw.get("kv_mask_BS"), q_seg=kw.get("q_segment_ids_BT"),
              kv_seg=kw.get("kv_segment_ids_BS"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_blockwise_equals_dense_and_reference(case):
  B, T, S, build, bq, bk = CASES[case]
  q, k, v = _qkv(B, T, S)
  kw = build(B, T, S)
  ref, live_BT = _reference(q, k, v, **_ref_kwargs(kw))
  out_d, g_d = jax.jit(lambda q, k, v: _run("dense", q, k, v, kw, bq, bk))(q, k, v)
  out_b, g_b = jax.jit(lambda q, k, v: _run("blockwise", q, k, v, kw, bq, bk))(q, k, v)
  np.testing.assert_allclose(out_d, ref, atol=1e-5)
  np.testing.assert_allclose(out_b, ref, atol=1e-5)
  for a, b in zip(g_d, g_b):
    np.testing.assert_allclose(b, a, atol=1e-5)
  # Rows that see no key: zero output and zero query gradient, in both.
  dead = ~live_BT
  assert np.all(np.asarray(out_b)[dead] == 0) and np.all(np.asarray(g_b[0])[dead] == 0)
  assert np.all(np.asarray(out_d)[dead] == 0) and np.all(np.asarray(g_d[0])[dead] == 0)


def test_row_has_key_matches_reference():
  for case in ("left_pad", "packed", "prefill_chunk", "decode_traced_offset", "bidirectional"):
    B, T, S, build, _, _ = CASES[case]
    kw = build(B, T, S)
    _, live_BT = _reference(*_qkv(B, T, S), **_ref_kwargs(kw))
    mask = attn.Mask(kw.get("causal", True), kw.get("q_offset", 0), kw.get("kv_mask_BS"),
                     kw.get("q_segment_ids_BT"), kw.get("kv_segment_ids_BS"))
    np.testing.assert_array_equal(attn.row_has_key(mask, B, T, S), live_BT, err_msg=case)


def test_blockwise_skips_masked_blocks():
  """Causal pairs beyond the diagonal are not enumerated; fully padded KV blocks are
  skipped at run time."""
  mask = attn.Mask(True, 0, _left_pad_mask(1, 64, [40]), None, None)
  tiles = attn._tiles(64, 64, mask, 16, 16)
  assert len(tiles.pairs_P2) == 4 * 5 // 2
  need = attn._pair_needed(tiles, 64, 64, jnp.int32(0), mask.kv_mask_BS, None, None)
  # KV blocks 0 and 1 (slots < 32) hold only padding.
  np.testing.assert_array_equal(need, [j >= 2 for _, j in tiles.pairs_P2])


@pytest.mark.parametrize("case", ["causal_packed", "bidirectional_padded"])
def test_splash_interpreted_equals_dense(case):
  """The TPU splash kernel in the Pallas interpreter on CPU: values and gradients."""
  B, T, S = 1, 256, 256
  q, k, v = _qkv(B, T, S, seed=1)
  if case == "causal_packed":
    seg = _packed_segments(B, T, [[100, 170]])
    kw = {"kv_mask_BS": _left_pad_mask(B, S, [37]), "q_segment_ids_BT": seg,
          "kv_segment_ids_BS": seg}
  else:
    kw = {"causal": False, "kv_mask_BS": _left_pad_mask(B, S, [5])}
  out_d, g_d = jax.jit(lambda q, k, v: _run("dense", q, k, v, kw, 128, 128))(q, k, v)
  out_s, g_s = jax.jit(lambda q, k, v: _run("splash", q, k, v, kw, 128, 128, interpret=True))(
      q, k, v)
  np.testing.assert_allclose(out_s, out_d, atol=1e-5)
  for a, b in zip(g_d, g_s):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_auto_choice_per_platform():
  f32, bf16 = jnp.float32, jnp.bfloat16
  assert attn.auto_impl("tpu", dtype=bf16, T=1024, S=1024, E=64) == "splash"
  assert attn.auto_impl("tpu", dtype=bf16, T=1, S=4096, E=64) == "dense"  # decode step
  assert attn.auto_impl("tpu", dtype=bf16, T=4096, S=4096, E=64, static_offset=False) == "blockwise"
  assert attn.auto_impl("cuda", dtype=bf16, T=1024, S=1024, E=64, gpu_attached=True) == "cudnn"
  assert attn.auto_impl("gpu", dtype=bf16, T=1024, S=1024, E=64, gpu_attached=True) == "cudnn"
  assert attn.auto_impl("cuda", dtype=f32, T=512, S=512, E=64, gpu_attached=True) == "dense"
  assert attn.auto_impl("cuda", dtype=bf16, T=4096, S=4096, E=64, gpu_attached=False) == "blockwise"
  assert attn.auto_impl("cuda", dtype=bf16, T=4096, S=4096, E=256, gpu_attached=True) == "blockwise"
  assert attn.auto_impl("cpu", dtype=f32, T=512, S=512, E=64) == "dense"
  assert attn.auto_impl("cpu", dtype=f32, T=1, S=16384, E=64) == "dense"  # decode step
  assert attn.auto_impl("cpu", dtype=f32, T=1024, S=1024, E=64) == "blockwise"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(impl="flash"), "Unknown attention implementation 'flash'. Did you mean 'splash'? "
                         "Valid choices: auto, "
                         "blockwise, cudnn, dense, splash."),
    (dict(impl="cudnn", platform="cpu"), "needs platform cuda, not cpu; valid choices on cpu: "
                                         "auto, blockwise, dense."),
    (dict(impl="splash", platform="cuda"), "valid choices on cuda: auto, blockwise, cudnn, dense."),
    (dict(impl="cudnn", platform="cuda"), "needs bfloat16/float16"),
    (dict(impl="splash", platform="tpu", q_offset=jnp.int32(0)), "static (python int) q_offset"),
    (dict(impl="blockwise", block_q=24), "block_q=24 does not divide T=64; valid choices: "
                                         "1, 2, 4, 8, 16, 32, 64."),
    (dict(impl="splash", platform="tpu", block_q=32),
     "block_q=32 does not divide T=64 in multiples of 128; valid choices: none (pad the length)."),
])
def test_bad_choices_are_one_line_errors(kwargs, needle):
  q, k, v = _qkv(1, 64, 64)
  with pytest.raises((KeyError, ValueError)) as e:
    jax.eval_shape(lambda q, k, v: attention(q, k, v, **kwargs), q, k, v)
  msg = e.value.args[0]
  assert needle in msg and "\n" not in msg, msg


def _export(platform, impl, T, dtype=jnp.bfloat16):
  """jax.export of value_and_grad through attention with a KV mask and segment ids."""
  sd = jax.ShapeDtypeStruct
  args = (sd((1, T, H, 64), dtype), sd((1, T, J, 64), dtype), sd((1, T, J, 64), dtype),
          sd((1, T), jnp.bool_), sd((1, T), jnp.int32))

  def loss(q, k, v, m, seg):
    out = attention(q, k, v, impl=impl, kv_mask_BS=m, q_segment_ids_BT=seg, kv_segment_ids_BS=seg,
                    platform=platform, block_q=128, block_kv=128)
    return out.astype(jnp.float32).sum()

  f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return export.export(f, platforms=[platform])(*args).mlir_module()


@pytest.mark.parametrize("impl", ["dense", "blockwise", "splash"])
def test_exports_for_tpu(impl):
  text = _export("tpu", impl, 256)
  assert ("tpu_custom_call" in text) == (impl == "splash")  # splash lowers through Mosaic


@pytest.mark.parametrize("T", [256, 4096])
def test_exports_for_cuda(T):
  """The cuDNN path refuses to trace without a GPU, so with none attached the cuda export
  uses what `auto` picks then: dense at short T, blockwise at long T."""
  attached = any(d.platform == "gpu" for d in jax.devices())
  picked = attn.auto_impl("cuda", dtype=jnp.bfloat16, T=T, S=T, E=64, gpu_attached=attached)
  assert picked == ("cudnn" if attached else "dense" if T == 256 else "blockwise")
  text = _export("cuda", "auto", T)
  assert ("while" in text) == (picked == "blockwise")  # blockwise's loop over block pairs
  assert ("cudnn" in text) == (picked == "cudnn")


def test_blockwise_memory_is_linear_under_scan_and_remat():
  """value_and_grad through layers in a remat'd lax.scan (as the decoder runs them):
  XLA temp bytes grow about 2x per doubling of T with blockwise (4x with dense)."""
  def temp_bytes(impl, T):
    def loss(x_LBTHE, k_LBTJE):
      def layer(c, xs):
        q, k = xs
        return c + attention(q + c, k, k, impl=impl, block_q=128, block_kv=128), None
      return jax.lax.scan(jax.checkpoint(layer), jnp.zeros(x_LBTHE.shape[1:]),
                          (x_LBTHE, k_LBTJE))[0].sum()
    sd = jax.ShapeDtypeStruct
    args = (sd((2, 1, T, H, E), jnp.float32), sd((2, 1, T, J, E), jnp.float32))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes("blockwise", 2048) / temp_bytes("blockwise", 1024) < 2.3
  assert temp_bytes("dense", 2048) / temp_bytes("dense", 1024) > 3.5
