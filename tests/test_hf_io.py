"""HF checkpoint I/O: load, save, round trips through transformers, errors."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from rlx import testing
from rlx.models import ModelConfig, abstract_model, forward, init_model, positions_from_mask
from rlx.models.hf_io import load_hf, load_tokenizer, save_hf

pytest.importorskip("torch")

_fwd = jax.jit(forward, static_argnums=0)


def _tensors(d) -> dict[str, np.ndarray]:
  d = Path(d)
  out = {}
  for f in sorted(d.glob("*.safetensors")):
    with safe_open(str(f), framework="numpy") as h:
      for k in h.keys():
        assert k not in out
        out[k] = h.get_tensor(k)
  return out


def _scaled_random(cfg, seed):
  """init_model params with weights ~N(0, 0.2) and perturbed norms/biases (O(1) logits)."""
  graphdef, params = init_model(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  # init_model: N(0, 0.02) matrices, unit norm scales, zero biases.
  assert abs(float(np.std(params["embed"][...])) - 0.02) < 2e-3
  assert np.all(np.asarray(params["layers"]["attn_norm"][...]) == 1)

  def scale(x):
    x = np.asarray(x)
    if x.std() > 0:
      return jnp.asarray(10 * x)
    return jnp.asarray(x + 0.1 * rng.standard_normal(x.shape, np.float32))

  return graphdef, jax.tree.map(scale, params)


def _perturbed(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x) * (1 + 0.2 * rng.standard_normal(x.shape, np.float32))),
      params)


def test_rlx_model_to_transformers_same_logits(tmp_path):
  """A model made in rlx (ModelConfig.for_family + init_model) loads in transformers."""
  cfg = ModelConfig.for_family(
      "qwen3", vocab_size=testing.DEFAULT_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, pad_token_id=0, eos_token_id=2)
  graphdef, params = _scaled_random(cfg, 0)
  save_hf(tmp_path, cfg, params, tokenizer=testing.build_tokenizer())
  tmodel = testing.load_torch_model(tmp_path)
  assert type(tmodel).__name__ == "Qwen3ForCausalLM"
  tokens, mask = testing.padded_batch(5, 3, 12)
  positions = positions_from_mask(mask)
  ref = testing.torch_logits(tmodel, tokens, mask, positions)
  ours = np.asarray(_fwd(graphdef, params, tokens, positions, mask)[0])
  err = np.abs(ours - ref)[mask].max()
  assert err <= 1e-4 and np.abs(ref).max() > 1.0, err
  assert "lm_head.weight" in _tensors(tmp_path)
  assert len(load_tokenizer(tmp_path)) == testing.TOKENIZER_SIZE  # saved alongside
  cfg2, _, params2 = load_hf(tmp_path)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family,tied,rope_scaling", [("llama", False, True), ("qwen2", True, False)])
def test_rlx_to_hf_to_transformers_same_logits(tmp_path, family, tied, rope_scaling):
  """Loaded params changed in rlx, saved, loaded by transformers: same logits."""
  src = testing.make_tiny_checkpoint(tmp_path / "src", family, tied=tied,
                                     rope_scaling=rope_scaling)
  cfg, graphdef, params = load_hf(src)
  params = _perturbed(params, 1)
  save_hf(tmp_path / "dst", cfg, params)
  tmodel = testing.load_torch_model(tmp_path / "dst")
  tokens, mask = testing.padded_batch(5, 3, 12)
  positions = positions_from_mask(mask)
  ref = testing.torch_logits(tmodel, tokens, mask, positions)
  ours = np.asarray(_fwd(graphdef, params, tokens, positions, mask)[0])
  err = np.abs(ours - ref)[mask].max()
  assert err <= 1e-4 and np.abs(ref).max() > 1.0, err
  assert ("lm_head.weight" in _tensors(tmp_path / "dst")) == (not tied)


@pytest.mark.parametrize("family,kw", [("qwen2", dict(tied=True)),
                                       ("llama", dict(tied=False, rope_scaling=True)),
                                       ("qwen3", dict(tied=False, seq_cls=True, num_labels=2))])
def test_hf_to_rlx_to_hf_same_tensors(tmp_path, family, kw):
  src = testing.make_tiny_checkpoint(tmp_path / "src", family, **kw)
  cfg, _, params = load_hf(src)
  save_hf(tmp_path / "dst", cfg, params)
  a, b = _tensors(src), _tensors(tmp_path / "dst")
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  src_cfg = json.loads((Path(src) / "config.json").read_text())
  dst_cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
  for key in ("architectures", "hidden_size", "num_key_value_heads", "tie_word_embeddings",
              "rms_norm_eps", "vocab_size", "head_dim"):
    assert src_cfg[key] == dst_cfg[key], key


def test_sharded_save_and_load(tmp_path):
  src = testing.make_tiny_checkpoint(tmp_path / "src", "llama", tied=False,
                                     max_shard_size="20KB")
  assert (Path(src) / "model.safetensors.index.json").exists()  # transformers' sharding
  cfg, graphdef, params = load_hf(src)
  out = tmp_path / "sharded"
  save_hf(out, cfg, params, max_shard_bytes=30_000)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 2 and not (out / "model.safetensors").exists()
  sizes = [sum(t.nbytes for t in _tensors_of(out / f).values()) for f in files]
  assert index["metadata"]["total_size"] == sum(sizes)
  assert max(sizes) <= 30_000 or len(_tensors_of(out / files[int(np.argmax(sizes))])) == 1
  assert _tensors(out).keys() == _tensors(src).keys()
  tokens, mask = testing.padded_batch(6, 2, 10)
  positions = positions_from_mask(mask)
  ref = testing.torch_logits(testing.load_torch_model(out), tokens, mask, positions)
  ours = np.asarray(_fwd(graphdef, params, tokens, positions, mask)[0])
  assert np.abs(ours - ref)[mask].max() <= 1e-4
  # Saving again unsharded into the same dir removes the old shards.
  save_hf(out, cfg, params)
  assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]


def _tensors_of(f):
  with safe_open(str(f), framework="numpy") as h:
    return {k: h.get_tensor(k) for k in h.keys()}


def test_bf16_save_and_load(tmp_path):
  src = testing.make_tiny_checkpoint(tmp_path / "src", "qwen2", dtype="bfloat16")
  cfg, _, params = load_hf(src)  # param_dtype defaults to the checkpoint's
  assert cfg.param_dtype == "bfloat16" and cfg.dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  cfg32, _, p32 = load_hf(src, param_dtype="float32")
  assert cfg32.param_dtype == "float32" and cfg32.dtype == "float32"
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p32)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), b)  # bf16 -> f32 exact
  save_hf(tmp_path / "dst", cfg, params)
  with safe_open(str(tmp_path / "dst" / "model.safetensors"), framework="numpy") as h:
    assert h.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
  assert json.loads((tmp_path / "dst" / "config.json").read_text())["dtype"] == "bfloat16"
  for k, v in _tensors(src).items():
    np.testing.assert_array_equal(v, _tensors(tmp_path / "dst")[k])


def test_load_with_sharding_fn(tmp_path):
  src = testing.make_tiny_checkpoint(tmp_path, "qwen3")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
  seen = []

  def sharding_fn(axes):
    seen.append(axes)
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  _, _, params = load_hf(src, sharding_fn=sharding_fn)
  _, _, ref = load_hf(src)
  assert ("layers", "embed", "heads", "head_dim") in seen and len(seen) == len(
      jax.tree.leaves(params))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
    assert a.sharding.mesh == mesh
    np.testing.assert_array_equal(a, b)


def test_tokenizer_load_and_vocab_check(tmp_path):
  d = testing.make_tiny_checkpoint(tmp_path / "ok", "qwen2")
  tok = load_tokenizer(d)
  assert len(tok) == testing.TOKENIZER_SIZE and tok.pad_token_id == 0 and tok.eos_token_id == 2
  text = "x = 12 + 345\n<|im_start|>"
  assert tok.decode(tok(text)["input_ids"]) == text
  small = testing.make_tiny_checkpoint(tmp_path / "small", "llama", vocab_size=200)
  with pytest.raises(ValueError, match="260 tokens but the model's vocab_size is 200"):
    load_tokenizer(small)


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No config.json"):
    load_hf(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_hf(tmp_path / "nope")
  d = Path(testing.make_tiny_checkpoint(tmp_path / "m", "llama", tied=False))
  hf = json.loads((d / "config.json").read_text())

  bad = tmp_path / "gpt2"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({**hf, "model_type": "gpt2",
                                               "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*Supported architectures: "
                     r"LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
    load_hf(bad)

  # A tensor missing (config says untied, so lm_head.weight is needed): named.
  t = _tensors(d)
  from safetensors.numpy import save_file
  missing = tmp_path / "missing"
  missing.mkdir()
  (missing / "config.json").write_text(json.dumps(hf))
  save_file({k: v for k, v in t.items() if k != "lm_head.weight"},
            str(missing / "model.safetensors"))
  with pytest.raises(KeyError, match="'lm_head.weight' is missing"):
    load_hf(missing)

  # A tensor of the wrong shape: named, with both shapes.
  wrong = tmp_path / "wrong"
  wrong.mkdir()
  (wrong / "config.json").write_text(json.dumps({**hf, "intermediate_size": 48}))
  save_file(t, str(wrong / "model.safetensors"))
  with pytest.raises(ValueError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape "
                     r"\[64, 32\], expected \[48, 32\]"):
    load_hf(wrong)

  # No weights.
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps(hf))
  (empty / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="only safetensors"):
    load_hf(empty)

  # A config that transformers could not express.
  cfg = ModelConfig.from_hf(hf).replace(qk_norm=True)
  with pytest.raises(ValueError, match="q/k norm exists in qwen3 only"):
    save_hf(tmp_path / "x", cfg, abstract_model(cfg)[1])


def test_tokenizer_of_a_qwen2_dir_keeps_its_own_encoding(tmp_path):
  """transformers 5 maps model_type qwen2 to Qwen2Tokenizer, whose rebuilt
  pre-tokenizer drops spaces/newlines of rlx's char tokenizer: load_tokenizer
  must return the directory's own encoding."""
  from rlx.data.tokenizer import make_char_tokenizer
  from rlx.models import ModelConfig, init_model
  from rlx.models.hf_io import load_tokenizer, save_hf
  tok = make_char_tokenizer()
  cfg = ModelConfig.from_hf(dict(
      model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=len(tok),
      hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True))
  _, params = init_model(cfg, __import__("jax").random.PRNGKey(0))
  save_hf(tmp_path, cfg, params, tokenizer=tok)
  loaded = load_tokenizer(tmp_path)
  text = "Tools: f(x:int)\nUser: add 12 and 7\tplease\nCall:\n"
  assert loaded(text)["input_ids"] == tok(text)["input_ids"]
  assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
  assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
