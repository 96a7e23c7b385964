"""Attention core shared by training, reference, reward models and the sampler.

`attention(q_BTHE, k_BSJE, v_BSJE, impl=..., ...)` with grouped-query heads
(H = J * Q: query head h reads KV head h // Q). Query t sits at cache slot
`q_offset + t`, key s at slot s; query t sees key s iff

    (not causal or s <= q_offset + t) and kv_mask_BS[b, s]
    and q_segment_ids_BT[b, t] == kv_segment_ids_BS[b, s]

Training runs T == S with q_offset 0; the sampler's prefill and decode pass
the cache index as q_offset and the live slots as kv_mask_BS. Segment ids
(packing) are integers in [0, S). Softmax statistics are float32. A query that
sees no key (a padding row) gets a zero output and zero gradients, in every
implementation.

Implementations (ATTENTION, chosen by name; `auto` picks per platform):
  dense      [B, J, Q*T, S] float32 scores, T x S memory (the original decoder's).
  blockwise  flash-style online softmax over KV blocks in pure JAX with a
             custom VJP: forward and backward hold O(T + S) per head, never
             T x S; block pairs that causality excludes are not enumerated and
             pairs the masks empty are skipped at run time. Any platform.
  cudnn      jax.nn.dot_product_attention(implementation="cudnn") (cuda,
             bfloat16/float16). Causality is native; a KV mask or segment ids
             go in as one [B, 1, T, S] mask shared by all heads.
  splash     Pallas TPU splash attention from jax (tpu; static q_offset, block
             sizes multiples of 128). Causality is a static block-sparse mask;
             the KV mask and segment ids become splash segment ids. XLA cannot
             partition the Mosaic kernel: given a ModelMesh of several devices
             it runs under jax.shard_map (rows over the batch axes, heads over
             the head axes where query and KV heads split alike).
tokamax (on PyPI, installs with jax 0.10.2) was checked first: its attention
API takes neither segment ids nor (on TPU) per-row KV lengths or batched
masks, so the two kernels are called through jax's own entry points.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlx.models import sharding
from rlx.registry import Registry

ATTENTION = Registry("attention implementation")
# Platforms (jax.export names) each implementation lowers for (one registered
# without an entry is taken to lower everywhere); "auto" is resolve()'s.
PLATFORMS = {"dense": ("cpu", "cuda", "rocm", "tpu"), "blockwise": ("cpu", "cuda", "rocm", "tpu"),
             "cudnn": ("cuda",), "splash": ("tpu",)}
_NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # dense: finite additive mask
DENSE_MAX_SCORES = 1 << 19  # auto: T * S at or below this stays dense (CPU: blockwise
# measured faster from T = S = 1k on; bench/seqlen.py)


@dataclasses.dataclass(frozen=True)
class Mask:
  """Who sees whom (see the module docstring); arrays may be None."""
  causal: bool
  q_offset: Any  # python int (static) or an int32 scalar array
  kv_mask_BS: jax.Array | None
  q_segment_ids_BT: jax.Array | None
  kv_segment_ids_BS: jax.Array | None

  def visible(self, q_slot_T: jax.Array, kv_slot_S: jax.Array, q_seg_BT=None, kv_seg_BS=None,
              kv_mask_BS=None) -> jax.Array:
    """Boolean [B or 1, T, S] for the given slots (and slices of the masks)."""
    vis = jnp.ones((1, q_slot_T.shape[0], kv_slot_S.shape[0]), bool)
    if self.causal:
      vis = vis & (kv_slot_S[None, None, :] <= q_slot_T[None, :, None])
    if kv_mask_BS is not None:
      vis = vis & kv_mask_BS[:, None, :]
    if q_seg_BT is not None:
      vis = vis & (q_seg_BT[:, :, None] == kv_seg_BS[:, None, :])
    return vis


def _platform(platform: str | None) -> str:
  p = jax.default_backend() if platform is None else platform
  return "cuda" if p == "gpu" else p


def _gpu_attached() -> bool:
  return any(d.platform == "gpu" for d in jax.devices())


def auto_impl(platform: str, *, dtype: Any, T: int, S: int, E: int, static_offset: bool = True,
              gpu_attached: bool = False) -> str:
  """The implementation `auto` runs on `platform` (a jax.export platform name).

  tpu: splash when T and S are multiples of 128 and q_offset is static; cuda:
  cudnn when a GPU is attached (the cuDNN path does not trace without one) and
  the dtype/head dim suit cuDNN. Otherwise dense for small T * S, else blockwise.
  """
  platform = _platform(platform)
  if platform == "tpu" and static_offset and T % 128 == 0 and S % 128 == 0:
    return "splash"
  if (platform == "cuda" and gpu_attached and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and E % 8 == 0 and E <= 128):
    return "cudnn"
  return "dense" if T * S <= DENSE_MAX_SCORES else "blockwise"


def _block(name: str, block: int, length: int, what: str, multiple: int = 1) -> int:
  """Block size capped at the length; a config error unless it divides the length."""
  b = min(block, length)
  if length % b or b % multiple:
    valid = [d for d in range(multiple, length + 1, multiple) if length % d == 0][:24]
    raise ValueError(f"attention: {name}={block} does not divide {what}={length}"
                     f"{f' in multiples of {multiple}' if multiple > 1 else ''}; valid choices: "
                     f"{', '.join(map(str, valid)) or 'none (pad the length)'}.")
  return b


def resolve(impl: str, platform: str | None, *, dtype: Any, T: int, S: int, E: int,
            static_offset: bool) -> str:
  """The implementation name to run, or a one-line ValueError/KeyError naming valid ones."""
  names = ["auto", *ATTENTION.names()]
  if impl not in names:
    close = difflib.get_close_matches(str(impl), names, n=1)
    raise KeyError(f"Unknown attention implementation {impl!r}."
                   f"{f' Did you mean {close[0]!r}?' if close else ''} Valid choices: "
                   f"{', '.join(sorted(names))}.")
  platform = _platform(platform)
  attached = platform == "cuda" and _gpu_attached()
  if impl == "auto":
    return auto_impl(platform, dtype=dtype, T=T, S=S, E=E, static_offset=static_offset,
                     gpu_attached=attached)
  here = ["auto"] + [n for n in ATTENTION.names() if platform in PLATFORMS.get(n, (platform,))]
  if platform not in PLATFORMS.get(impl, (platform,)):
    raise ValueError(f"attention implementation {impl!r} needs platform "
                     f"{'/'.join(PLATFORMS[impl])}, not {platform}; valid choices on {platform}: "
                     f"{', '.join(here)}.")
  if impl == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention implementation 'cudnn' needs bfloat16/float16 q/k/v, not "
                     f"{jnp.dtype(dtype).name}; valid choices for {jnp.dtype(dtype).name}: "
                     f"{', '.join(n for n in here if n != 'cudnn')}.")
  if impl == "splash" and not static_offset:
    raise ValueError("attention implementation 'splash' needs a static (python int) q_offset; "
                     "valid choices for a traced offset: dense, blockwise.")
  return impl


def attention(q_BTHE: jax.Array, k_BSJE: jax.Array, v_BSJE: jax.Array, *, impl: str = "dense",
              causal: bool = True, q_offset: Any = 0, kv_mask_BS: jax.Array | None = None,
              q_segment_ids_BT: jax.Array | None = None,
              kv_segment_ids_BS: jax.Array | None = None, scale: float | None = None,
              block_q: int = 512, block_kv: int = 512, platform: str | None = None,
              interpret: bool = False, mesh: Any = None) -> jax.Array:
  """softmax(q k^T * scale + mask) v per head -> [B, T, H, E] in q's dtype.

  impl: a name in ATTENTION (dense, blockwise, cudnn, splash, auto).
  causal, q_offset, kv_mask_BS, segment ids: who sees whom (module docstring).
  scale: default E ** -0.5. block_q/block_kv: tiles of blockwise and splash,
  capped at T/S; they must divide T/S. platform: the platform this is lowered
  for (jax.export name; default the running backend). interpret: run splash in
  the Pallas interpreter (tests on CPU). mesh: a `rlx.models.sharding.ModelMesh`
  of the inputs (splash runs under shard_map on it; XLA partitions the others).
  """
  B, T, H, E = q_BTHE.shape
  S, J = k_BSJE.shape[1], k_BSJE.shape[2]
  if H % J:
    raise ValueError(f"attention: {H} query heads are not a multiple of {J} KV heads.")
  if (q_segment_ids_BT is None) != (kv_segment_ids_BS is None):
    raise ValueError("attention: pass both q_segment_ids_BT and kv_segment_ids_BS, or neither.")
  static_offset = isinstance(q_offset, (int, np.integer))
  name = resolve(impl, "tpu" if interpret and impl == "splash" else platform,
                 dtype=q_BTHE.dtype, T=T, S=S, E=E, static_offset=static_offset)
  mask = Mask(causal, int(q_offset) if static_offset else jnp.asarray(q_offset, jnp.int32),
              None if kv_mask_BS is None else kv_mask_BS.astype(bool),
              None if q_segment_ids_BT is None else q_segment_ids_BT.astype(jnp.int32),
              None if kv_segment_ids_BS is None else kv_segment_ids_BS.astype(jnp.int32))
  scale = E ** -0.5 if scale is None else float(scale)
  fn = ATTENTION.get(name)
  return fn(q_BTHE, k_BSJE, v_BSJE, mask, scale=scale, block_q=block_q, block_kv=block_kv,
            interpret=interpret, mesh=mesh)


def row_has_key(mask: Mask, B: int, T: int, S: int) -> jax.Array:
  """[B, T] bool: query t sees at least one key; O(B * (T + S)) work (no T x S).

  The first visible slot of each (row, segment) comes from a scatter-min, so a
  query is live iff that slot exists and (causal) is at or before its own slot.
  """
  slot_S = jnp.arange(S, dtype=jnp.int32)
  live_BS = jnp.ones((B, S), bool) if mask.kv_mask_BS is None else mask.kv_mask_BS
  cand_BS = jnp.where(live_BS, slot_S[None], S)
  if mask.q_segment_ids_BT is None:
    first_BT = jnp.broadcast_to(cand_BS.min(axis=1, keepdims=True), (B, T))
  else:
    rows = jnp.arange(B)[:, None]
    first_BN = jnp.full((B, S), S, jnp.int32).at[rows, mask.kv_segment_ids_BS].min(
        cand_BS, mode="drop")
    first_BT = jnp.take_along_axis(first_BN, jnp.clip(mask.q_segment_ids_BT, 0, S - 1), axis=1)
    first_BT = jnp.where((mask.q_segment_ids_BT >= 0) & (mask.q_segment_ids_BT < S), first_BT, S)
  if mask.causal:
    return first_BT <= (mask.q_offset + jnp.arange(T, dtype=jnp.int32))[None]
  return first_BT < S


# ------------------------------------------------------------------ dense
@ATTENTION.register("dense")
def dense(q_BTHE, k_BSJE, v_BSJE, mask: Mask, *, scale: float, **unused):
  """[B, J, Q*T, S] float32 scores, additive finite mask, softmax, probs in q's dtype."""
  del unused
  dt = q_BTHE.dtype
  B, T, H, E = q_BTHE.shape
  S, J = k_BSJE.shape[1], k_BSJE.shape[2]
  Q = H // J
  q = q_BTHE * jnp.asarray(scale, dt)  # scale the (smaller) queries, not the scores
  q_BJXE = q.reshape(B, T, J, Q, E).transpose(0, 2, 3, 1, 4).reshape(B, J, Q * T, E)
  k_BJSE, v_BJSE = k_BSJE.transpose(0, 2, 1, 3), v_BSJE.transpose(0, 2, 1, 3)
  s = jnp.einsum("bjxe,bjse->bjxs", q_BJXE, k_BJSE, preferred_element_type=jnp.float32)
  vis_BTS = mask.visible(mask.q_offset + jnp.arange(T), jnp.arange(S), mask.q_segment_ids_BT,
                         mask.kv_segment_ids_BS, mask.kv_mask_BS)
  bias = jnp.where(vis_BTS, 0.0, _NEG_INF).astype(jnp.float32)[:, None, None]
  probs = jax.nn.softmax(s.reshape(B, J, Q, T, S) + bias, axis=-1)
  probs = jnp.where(vis_BTS.any(-1)[:, None, None, :, None], probs, 0.0).astype(dt)
  out = jnp.einsum("bjxs,bjse->bjxe", probs.reshape(B, J, Q * T, S), v_BJSE)
  return out.reshape(B, J, Q, T, E).transpose(0, 3, 1, 2, 4).reshape(B, T, H, E)


# ------------------------------------------------------------------ blockwise
@dataclasses.dataclass(frozen=True)
class _Tiles:
  """Static tiling of blockwise: block sizes and the enumerated (q, kv) block pairs."""
  bq: int
  bk: int
  causal: bool
  pairs_P2: tuple  # ((i, j), ...) block pairs that static causality allows


def _tiles(T: int, S: int, mask: Mask, block_q: int, block_kv: int) -> _Tiles:
  bq = _block("block_q", block_q, T, "T")
  bk = _block("block_kv", block_kv, S, "S")
  pairs = []
  for i in range(T // bq):
    for j in range(S // bk):
      if mask.causal and isinstance(mask.q_offset, int) and j * bk > mask.q_offset + (i + 1) * bq - 1:
        continue  # every key of block j is after every query of block i
      pairs.append((i, j))
  return _Tiles(bq, bk, mask.causal, tuple(pairs))


def _pair_needed(tiles: _Tiles, T, S, q_offset, kv_mask_BS, qseg_BT, kvseg_BS) -> jax.Array:
  """[P] bool: a block pair can hold a visible (query, key) (conservative, O(T + S))."""
  bq, bk = tiles.bq, tiles.bk
  i_P = jnp.asarray([p[0] for p in tiles.pairs_P2], jnp.int32)
  j_P = jnp.asarray([p[1] for p in tiles.pairs_P2], jnp.int32)
  need_BP = jnp.ones((1, len(tiles.pairs_P2)), bool)
  if tiles.causal:
    need_BP = need_BP & (j_P * bk <= q_offset + (i_P + 1) * bq - 1)[None]
  B = 1
  live_BS = None
  if kv_mask_BS is not None:
    live_BS = kv_mask_BS
    B = kv_mask_BS.shape[0]
    any_BK = live_BS.reshape(B, S // bk, bk).any(-1)
    need_BP = need_BP & any_BK[:, j_P]
  if qseg_BT is not None:
    B = qseg_BT.shape[0]
    big = jnp.iinfo(jnp.int32).max
    ks = kvseg_BS if live_BS is None else jnp.where(live_BS, kvseg_BS, -1)
    kmax = ks.reshape(B, S // bk, bk).max(-1)
    kmin = jnp.where(ks < 0, big, ks).reshape(B, S // bk, bk).min(-1)
    qs = qseg_BT.reshape(B, T // bq, bq)
    qmin, qmax = qs.min(-1), qs.max(-1)
    need_BP = need_BP & (kmin[:, j_P] <= qmax[:, i_P]) & (qmin[:, i_P] <= kmax[:, j_P])
  return need_BP.any(0)


def _block_visible(tiles: _Tiles, mask_args, i, j):
  """Boolean [B or 1, bq, bk] visibility of block pair (i, j)."""
  q_offset, kv_mask_BS, qseg_BT, kvseg_BS = mask_args
  bq, bk = tiles.bq, tiles.bk
  sl = lambda x, start, size: None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size, 1)
  m = Mask(tiles.causal, q_offset, None, None, None)
  return m.visible(q_offset + i * bq + jnp.arange(bq), j * bk + jnp.arange(bk),
                   sl(qseg_BT, i * bq, bq), sl(kvseg_BS, j * bk, bk), sl(kv_mask_BS, j * bk, bk))


def _over_pairs(update, init, ij_P2, need_P):
  """carry = update(carry, i, j) for each needed block pair, in order.

  A while_loop rather than a scan: under an outer scan or remat, JAX's partial
  evaluation would split a scan here into a known half whose per-pair block
  scores become stacked residuals ([P, ..., bq, bk]: T x S memory again); a
  while_loop is recomputed whole.
  """
  def body(state):
    p, carry = state
    i, j = ij_P2[p, 0], ij_P2[p, 1]
    carry = jax.lax.cond(need_P[p], lambda c: update(c, i, j), lambda c: c, carry)
    return p + 1, carry

  return jax.lax.while_loop(lambda st: st[0] < ij_P2.shape[0], body, (jnp.int32(0), init))[1]


def _flash_fwd_impl(tiles: _Tiles, q, k, v, mask_args):
  """q [B, J, Q, T, E] (scaled), k/v [B, J, S, E] -> out (q dtype), lse float32 [B, J, Q, T]."""
  B, J, Q, T, E = q.shape
  S = k.shape[2]
  bq, bk = tiles.bq, tiles.bk
  need_P = _pair_needed(tiles, T, S, *mask_args)
  ij_P2 = jnp.asarray(tiles.pairs_P2, jnp.int32).reshape(-1, 2)

  def update(carry, i, j):
      acc, m, l = carry
      qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, 3)
      kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, 2)
      vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, 2)
      s = jnp.einsum("bjqte,bjse->bjqts", qb, kb, preferred_element_type=jnp.float32)
      vis = _block_visible(tiles, mask_args, i, j)[:, None, None]
      s = jnp.where(vis, s, -jnp.inf)
      m_old = jax.lax.dynamic_slice_in_dim(m, i * bq, bq, 3)
      l_old = jax.lax.dynamic_slice_in_dim(l, i * bq, bq, 3)
      a_old = jax.lax.dynamic_slice_in_dim(acc, i * bq, bq, 3)
      m_new = jnp.maximum(m_old, s.max(-1))
      m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no key seen yet: exp(-inf) = 0
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m_old - m_safe)
      l_new = alpha * l_old + p.sum(-1)
      a_new = alpha[..., None] * a_old + jnp.einsum(
          "bjqts,bjse->bjqte", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
      return (jax.lax.dynamic_update_slice_in_dim(acc, a_new, i * bq, 3),
              jax.lax.dynamic_update_slice_in_dim(m, m_new, i * bq, 3),
              jax.lax.dynamic_update_slice_in_dim(l, l_new, i * bq, 3))

  init = (jnp.zeros((B, J, Q, T, E), jnp.float32), jnp.full((B, J, Q, T), -jnp.inf, jnp.float32),
          jnp.zeros((B, J, Q, T), jnp.float32))
  acc, m, l = _over_pairs(update, init, ij_P2, need_P)
  live = l > 0
  out = jnp.where(live[..., None], acc / jnp.where(live, l, 1.0)[..., None], 0.0)
  lse = jnp.where(live, m + jnp.log(jnp.where(live, l, 1.0)), 0.0)
  return out.astype(q.dtype), lse


def _flash_bwd_impl(tiles: _Tiles, q, k, v, mask_args, out, lse, dout):
  B, J, Q, T, E = q.shape
  S = k.shape[2]
  bq, bk = tiles.bq, tiles.bk
  need_P = _pair_needed(tiles, T, S, *mask_args)
  ij_P2 = jnp.asarray(tiles.pairs_P2, jnp.int32).reshape(-1, 2)
  delta = jnp.einsum("bjqte,bjqte->bjqt", dout.astype(jnp.float32), out.astype(jnp.float32))
  dt = q.dtype

  def update(carry, i, j):
      dq, dk, dv = carry
      qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, 3)
      dob = jax.lax.dynamic_slice_in_dim(dout, i * bq, bq, 3)
      kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, 2)
      vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, 2)
      lse_b = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, 3)
      delta_b = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, 3)
      s = jnp.einsum("bjqte,bjse->bjqts", qb, kb, preferred_element_type=jnp.float32)
      vis = _block_visible(tiles, mask_args, i, j)[:, None, None]
      p = jnp.where(vis, jnp.exp(s - lse_b[..., None]), 0.0)
      dp = jnp.einsum("bjqte,bjse->bjqts", dob, vb, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_b[..., None])).astype(dt)
      f32 = jnp.float32
      dv_j = jnp.einsum("bjqts,bjqte->bjse", p.astype(dt), dob, preferred_element_type=f32)
      dk_j = jnp.einsum("bjqts,bjqte->bjse", ds, qb, preferred_element_type=f32)
      dq_i = jnp.einsum("bjqts,bjse->bjqte", ds, kb, preferred_element_type=f32)
      add = lambda acc, x, start, axis: jax.lax.dynamic_update_slice_in_dim(
          acc, jax.lax.dynamic_slice_in_dim(acc, start, x.shape[axis], axis) + x, start, axis)
      return add(dq, dq_i, i * bq, 3), add(dk, dk_j, j * bk, 2), add(dv, dv_j, j * bk, 2)

  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32),
          jnp.zeros(v.shape, jnp.float32))
  dq, dk, dv = _over_pairs(update, init, ij_P2, need_P)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _flash_fwd(tiles, q, k, v, mask_args):
  out, lse = _flash_fwd_impl(tiles, q, k, v, mask_args)
  return out, (q, k, v, mask_args, out, lse)


def _flash_bwd(tiles, res, dout):
  q, k, v, mask_args, out, lse = res
  dq, dk, dv = _flash_bwd_impl(tiles, q, k, v, mask_args, out, lse, dout)
  return dq, dk, dv, jax.tree.map(lambda _: None, mask_args)


def _flash_primal(tiles, q, k, v, mask_args):
  return _flash_fwd_impl(tiles, q, k, v, mask_args)[0]


_flash = jax.custom_vjp(_flash_primal, nondiff_argnums=(0,))
_flash.defvjp(_flash_fwd, _flash_bwd)


@ATTENTION.register("blockwise")
def blockwise(q_BTHE, k_BSJE, v_BSJE, mask: Mask, *, scale: float, block_q: int, block_kv: int,
              **unused):
  """Flash-style attention in pure JAX (see the module docstring)."""
  del unused
  B, T, H, E = q_BTHE.shape
  S, J = k_BSJE.shape[1], k_BSJE.shape[2]
  Q = H // J
  tiles = _tiles(T, S, mask, block_q, block_kv)
  q = (q_BTHE * jnp.asarray(scale, q_BTHE.dtype)).reshape(B, T, J, Q, E).transpose(0, 2, 3, 1, 4)
  k, v = k_BSJE.transpose(0, 2, 1, 3), v_BSJE.transpose(0, 2, 1, 3)
  q_offset = jnp.asarray(mask.q_offset, jnp.int32)
  mask_args = (q_offset, mask.kv_mask_BS, mask.q_segment_ids_BT, mask.kv_segment_ids_BS)
  out = _flash(tiles, q, k, v, mask_args)
  return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, E)


# ------------------------------------------------------------------ kernels
@ATTENTION.register("cudnn")
def cudnn(q_BTHE, k_BSJE, v_BSJE, mask: Mask, *, scale: float, **unused):
  """cuDNN flash attention through jax.nn.dot_product_attention (needs a GPU to trace)."""
  del unused
  B, T, H, E = q_BTHE.shape
  S = k_BSJE.shape[1]
  native_causal = mask.causal and isinstance(mask.q_offset, int) and mask.q_offset == 0 and T == S
  bool_mask = None
  if (mask.kv_mask_BS is not None or mask.q_segment_ids_BT is not None
      or (mask.causal and not native_causal)):
    m = mask if not native_causal else dataclasses.replace(mask, causal=False)
    bool_mask = m.visible(mask.q_offset + jnp.arange(T), jnp.arange(S), mask.q_segment_ids_BT,
                          mask.kv_segment_ids_BS, mask.kv_mask_BS)[:, None]
  out = jax.nn.dot_product_attention(q_BTHE, k_BSJE, v_BSJE, mask=bool_mask, scale=scale,
                                     is_causal=native_causal, implementation="cudnn")
  return jnp.where(row_has_key(mask, B, T, S)[:, :, None, None], out, 0).astype(q_BTHE.dtype)


@ATTENTION.register("splash")
def splash(q_BTHE, k_BSJE, v_BSJE, mask: Mask, *, scale: float, block_q: int, block_kv: int,
           interpret: bool = False, mesh: Any = None, **unused):
  """Pallas TPU splash attention (jax.experimental.pallas.ops.tpu.splash_attention).

  XLA cannot partition the Mosaic kernel: on a mesh of several devices (`mesh`, a
  ModelMesh) it runs under `jax.shard_map`, each device on its own rows (batch
  axes) and, where query and KV heads split alike, its own heads (head axes).
  """
  del unused
  local = functools.partial(_splash_local, scale=scale, block_q=block_q, block_kv=block_kv,
                            interpret=interpret, causal=mask.causal, q_offset=mask.q_offset)
  masks = {"kv_mask_BS": mask.kv_mask_BS, "q_segment_ids_BT": mask.q_segment_ids_BT,
           "kv_segment_ids_BS": mask.kv_segment_ids_BS}
  masks = {k: v for k, v in masks.items() if v is not None}
  if not sharding.active(mesh):
    return local(q_BTHE, k_BSJE, v_BSJE, masks)
  B, _, H, _ = q_BTHE.shape
  rows, heads = mesh.batch_axes(B), mesh.head_axes(H, k_BSJE.shape[2])
  x_spec = sharding.spec(rows, None, heads, None)
  m_spec = {k: sharding.spec(rows, None) for k in masks}
  return jax.shard_map(local, mesh=mesh.mesh, in_specs=(x_spec, x_spec, x_spec, m_spec),
                       out_specs=x_spec, check_vma=False)(q_BTHE, k_BSJE, v_BSJE, masks)


def _splash_local(q_BTHE, k_BSJE, v_BSJE, masks: dict, *, scale: float, block_q: int,
                  block_kv: int, interpret: bool, causal: bool, q_offset: int):
  """splash on one device's block: the kernel vmapped over rows (masks: Mask's arrays)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  mask = Mask(causal, q_offset, masks.get("kv_mask_BS"), masks.get("q_segment_ids_BT"),
              masks.get("kv_segment_ids_BS"))
  B, T, H, E = q_BTHE.shape
  S = k_BSJE.shape[1]
  bq = _block("block_q", block_q, T, "T", multiple=sk.NUM_LANES)
  bk = _block("block_kv", block_kv, S, "S", multiple=sk.NUM_LANES)
  head = (sm.CausalMask((T, S), offset=mask.q_offset) if mask.causal else sm.FullMask((T, S)))
  sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                        block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  kernel = sk.make_splash_mha(sm.MultiHeadMask([head] * H), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=interpret)
  # The KV mask folds into the segment ids: a dead key gets id -1, which no query has.
  q_seg_BT = (jnp.zeros((B, T), jnp.int32) if mask.q_segment_ids_BT is None
              else mask.q_segment_ids_BT)
  kv_seg_BS = (jnp.zeros((B, S), jnp.int32) if mask.kv_segment_ids_BS is None
               else mask.kv_segment_ids_BS)
  if mask.kv_mask_BS is not None:
    kv_seg_BS = jnp.where(mask.kv_mask_BS, kv_seg_BS, -1)
  use_segments = mask.kv_mask_BS is not None or mask.q_segment_ids_BT is not None

  def one(q_HTE, k_JSE, v_JSE, qs_T, ks_S):
    seg = sk.SegmentIds(q=qs_T, kv=ks_S) if use_segments else None
    return kernel(q_HTE, k_JSE, v_JSE, segment_ids=seg)

  q = (q_BTHE * jnp.asarray(scale, q_BTHE.dtype)).transpose(0, 2, 1, 3)
  out_BHTE = jax.vmap(one)(q, k_BSJE.transpose(0, 2, 1, 3), v_BSJE.transpose(0, 2, 1, 3),
                           q_seg_BT, kv_seg_BS)
  out = out_BHTE.transpose(0, 2, 1, 3)
  return jnp.where(row_has_key(mask, B, T, S)[:, :, None, None], out, 0).astype(q_BTHE.dtype)
