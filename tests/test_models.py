"""Decoder parity with transformers (torch CPU, float32), KV cache, config, axes."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx import testing
from rlx.models import (ModelConfig, abstract_model, forward, init_cache, lm_head,
                        logical_axes, num_params, positions_from_mask)
from rlx.models.hf_io import load_hf

pytest.importorskip("torch")

_fwd = jax.jit(forward, static_argnums=0, static_argnames=("return_hidden", "remat"))

# (family, make_tiny_checkpoint kwargs): covers GQA (4 q / 2 kv heads) in all,
# qkv bias (qwen2), q/k norm (qwen3), tied and untied, Llama-3 rope scaling, MQA.
CASES = {
    "qwen2_tied": ("qwen2", dict(tied=True)),
    "qwen2_untied": ("qwen2", dict(tied=False)),
    "llama_untied_rope_scaling": ("llama", dict(tied=False, rope_scaling=True)),
    "llama_tied_mqa": ("llama", dict(tied=True, num_key_value_heads=1)),
    "qwen3_tied": ("qwen3", dict(tied=True)),
    "qwen3_untied_bias": ("qwen3", dict(tied=False, attention_bias=True)),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  out = {}
  for name, (fam, kw) in CASES.items():
    d = testing.make_tiny_checkpoint(tmp_path_factory.mktemp(name), fam, seed=len(out), **kw)
    out[name] = (d, testing.load_torch_model(d))
  return out


@pytest.mark.parametrize("case", list(CASES))
def test_parity_left_padded(ckpts, case):
  d, tmodel = ckpts[case]
  cfg, graphdef, params = load_hf(d)
  tokens, mask = testing.padded_batch(0, 3, 12, side="left")
  # Offset positions so RoPE (and Llama-3 scaling's low/medium/high bands) matter.
  positions = np.asarray(positions_from_mask(mask)) + 37
  ref = testing.torch_logits(tmodel, tokens, mask, positions)
  logits, cache = _fwd(graphdef, params, tokens, positions, mask)
  assert cache is None
  assert logits.shape == (3, 12, cfg.vocab_size) and logits.dtype == jnp.float32
  err = np.abs(np.asarray(logits) - ref)[mask].max()
  assert err <= 1e-4, err
  assert np.abs(ref[mask]).max() > 1.0  # the comparison has signal


def test_family_features_loaded(ckpts):
  cfg = load_hf(ckpts["qwen2_tied"][0])[0]
  assert (cfg.attention_bias, cfg.attention_out_bias, cfg.qk_norm) == (True, False, False)
  assert cfg.tie_word_embeddings and cfg.num_kv_heads == 2
  cfg = load_hf(ckpts["qwen3_untied_bias"][0])[0]
  assert (cfg.attention_bias, cfg.attention_out_bias, cfg.qk_norm) == (True, True, True)
  cfg = load_hf(ckpts["llama_untied_rope_scaling"][0])[0]
  assert cfg.rope_scaling_dict == {"factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64}


@pytest.mark.parametrize("case", ["qwen2_tied", "llama_untied_rope_scaling", "qwen3_tied"])
def test_cached_decoding_equals_full_forward(ckpts, case):
  cfg, graphdef, params = load_hf(ckpts[case][0])
  B, P, T = 3, 7, 12  # prompt of 7 (left-padded), then 5 one-token steps
  tokens, mask = testing.padded_batch(1, B, T, side="left", min_len=T - P + 1)
  positions = positions_from_mask(mask)
  full, _ = _fwd(graphdef, params, tokens, positions, mask)
  S = T + 3  # cache longer than needed: unused slots are masked out
  kv_mask = np.concatenate([mask, np.zeros((B, S - T), bool)], axis=1)
  cache = init_cache(cfg, B, S)
  assert cache["k"].shape == (cfg.num_layers, B, S, cfg.num_kv_heads, cfg.head_dim)
  out, cache = _fwd(graphdef, params, tokens[:, :P], positions[:, :P], kv_mask, cache=cache,
                    cache_index=jnp.int32(0))
  steps = [out]
  for t in range(P, T):
    out, cache = _fwd(graphdef, params, tokens[:, t:t + 1], positions[:, t:t + 1], kv_mask,
                      cache=cache, cache_index=jnp.int32(t))
    steps.append(out)
  cached = np.concatenate([np.asarray(s) for s in steps], axis=1)
  err = np.abs(cached - np.asarray(full))[mask].max()
  assert err <= 1e-5, err
  # The cache holds the K/V of every written slot and zeros after.
  assert np.all(np.asarray(cache["k"])[:, :, T:] == 0)
  assert np.abs(np.asarray(cache["k"])[:, :, :T][:, mask]).max() > 0


def test_padding_slots_do_not_leak(ckpts):
  """Changing pad tokens (masked keys) leaves valid logits unchanged."""
  _, graphdef, params = load_hf(ckpts["qwen3_tied"][0])
  tokens, mask = testing.padded_batch(2, 3, 12, side="left")
  positions = positions_from_mask(mask)
  a, _ = _fwd(graphdef, params, tokens, positions, mask)
  tokens2 = np.where(mask, tokens, 77)
  b, _ = _fwd(graphdef, params, tokens2, positions, mask)
  assert np.array_equal(np.asarray(a)[mask], np.asarray(b)[mask])
  assert np.all(np.isfinite(np.asarray(a)))


def test_lm_head_tied_and_untied(ckpts):
  for case in ("qwen2_tied", "qwen2_untied"):
    _, graphdef, params = load_hf(ckpts[case][0])
    tokens, mask = testing.padded_batch(2, 3, 12, side="left")
    positions = positions_from_mask(mask)
    logits, _ = _fwd(graphdef, params, tokens, positions, mask)
    hidden, _ = _fwd(graphdef, params, tokens, positions, mask, return_hidden=True)
    assert hidden.shape == (3, 12, 32)
    np.testing.assert_allclose(lm_head(graphdef, params, hidden), logits, atol=1e-5)
    np.testing.assert_allclose(lm_head(params, hidden), logits, atol=1e-5)
    assert ("lm_head" in params) == (case == "qwen2_untied")


def test_bf16_params_and_compute(ckpts):
  d = ckpts["qwen2_tied"][0]
  _, g32, p32 = load_hf(d)
  cfg, g16, p16 = load_hf(d, dtype="bfloat16", param_dtype="bfloat16")
  assert cfg.param_dtype == "bfloat16" and cfg.dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
  tokens, mask = testing.padded_batch(3, 3, 12)
  positions = positions_from_mask(mask)
  l32 = np.asarray(_fwd(g32, p32, tokens, positions, mask)[0])[mask]
  l16 = np.asarray(_fwd(g16, p16, tokens, positions, mask)[0])[mask]
  rel = np.abs(l16 - l32).max() / np.abs(l32).max()
  assert 1e-6 < rel < 0.05, rel  # bf16 rounding is visible but small


def test_positions_from_mask():
  mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(
      positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]])


def test_param_shapes_axes_and_count():
  cfg = ModelConfig.for_family("qwen3", vocab_size=96, hidden_size=32, intermediate_size=48,
                               num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
                               attention_bias=True, attention_out_bias=True)
  _, params = abstract_model(cfg)  # shapes only, nothing allocated
  E, M, V, L, H, K, D = 32, 48, 96, 3, 4, 2, 16
  per_layer = (2 * E + E * H * D + 2 * E * K * D + H * D * E + 3 * E * M  # norms, qkvo, mlp
               + H * D + 2 * K * D + E + 2 * D)  # biases, q/k norms
  assert num_params(params) == V * E + L * per_layer + E + E * V
  axes = logical_axes(params)
  assert jax.tree.structure(axes) == jax.tree.structure(params)
  for spec, x in zip(jax.tree.leaves(axes), jax.tree.leaves(params)):
    assert len(spec) == len(x.shape)
  assert tuple(axes["layers"]["q"].get_value()) == ("layers", "embed", "heads", "head_dim")
  assert tuple(axes["embed"].get_value()) == ("vocab", "embed")
  assert params["layers"]["q"].shape == (L, E, H, D)
  assert params["layers"]["o"].shape == (L, H, D, E)


def test_config_roundtrip_through_transformers():
  import transformers

  hf = testing.tiny_hf_config("llama", tied=False, rope_scaling=True, num_key_value_heads=1)
  cfg = ModelConfig.from_hf(hf)
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.tie_word_embeddings) == (1, 8, False)
  hf2 = transformers.AutoConfig.for_model(**cfg.to_hf_dict())
  assert ModelConfig.from_hf(hf2) == cfg
  assert ModelConfig.from_hf(cfg.to_hf_dict()) == cfg
  # Legacy config.json keys (rope_theta + rope_scaling with 'type').
  legacy = {**cfg.to_hf_dict(), "rope_parameters": None,
            "rope_scaling": {"type": "llama3", **cfg.rope_scaling_dict}}
  assert ModelConfig.from_hf(legacy) == cfg
  hash(cfg)  # usable as a static jit argument


def test_config_errors():
  base = testing.tiny_hf_config("qwen2").to_dict()
  with pytest.raises(ValueError, match="Supported architectures: LlamaForCausalLM"):
    ModelConfig.from_hf({**base, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
  with pytest.raises(ValueError, match="rope type 'yarn'.*default, llama3"):
    ModelConfig.from_hf({**base, "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                     "rope_theta": 1e4}})
  with pytest.raises(ValueError, match="Valid choices: llama, qwen2, qwen3"):
    ModelConfig.for_family("mistral", vocab_size=8, hidden_size=8, intermediate_size=8,
                           num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8)
  with pytest.raises(ValueError, match="Unsupported dtype 'int8'"):
    ModelConfig.from_hf(base, dtype="int8")
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    dataclasses.replace(ModelConfig.from_hf(base), num_kv_heads=3)
