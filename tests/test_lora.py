"""LoRA / QLoRA: identity at init, adapter-only updates, merged and PEFT export
parity with transformers, int8 base, bad-config errors, kill-and-resume."""
from __future__ import annotations

import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlx import models
from rlx.models import hf_io, lora
from rlx.train import steps

HF = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=48, hidden_size=32,
          intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
          rms_norm_eps=1e-6)


def _model():
  cfg = models.ModelConfig.from_hf(HF)
  gd, params = models.init_model(cfg, jax.random.PRNGKey(0))
  return cfg, gd, params


def _logits(gd, params, tokens_BT, adapters=None):
  B, T = tokens_BT.shape
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  return models.forward(gd, params, tokens_BT, pos, jnp.ones((B, T), bool),
                        adapters=adapters)[0]


TOKENS = jax.random.randint(jax.random.PRNGKey(5), (2, 12), 0, 48)


def _batch(N=4, P=4, C=4):
  return dict(tokens=jax.random.randint(jax.random.PRNGKey(1), (N, P + C), 0, 48),
              attn_mask=jnp.ones((N, P + C), bool), loss_mask=jnp.ones((N, C)),
              adv=jnp.asarray([1.0, -1.0, 0.5, -0.5]), old_logp=jnp.zeros((N, C)),
              sample_logp=jnp.zeros((N, C)), ref_logp=jnp.zeros((N, C)),
              correct=jnp.zeros((N,), bool), group=jnp.asarray([0, 0, 1, 1]),
              lengths=jnp.full((N,), C))


def _trained(spec, cfg, gd, params, scales=None, n=3):
  """Adapters after n Adam updates on a toy policy-gradient batch."""
  effective = lambda ad, fr, step: (fr["params"], lora.decoder_adapters(spec, ad, fr["scales"]))
  frozen = {"params": params, "scales": scales or {}}
  tx = optax.adam(3e-2)
  ad = lora.init_adapters(cfg, spec, jax.random.PRNGKey(2))
  upd = steps.make_update_fn(gd, tx, {"pg": {}}, temperature=1.0, chunk=0,
                             detached_old=True, max_len=4, num_groups=2, effective=effective)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=ad, opt_state=tx.init(ad),
                           skipped=jnp.zeros((), jnp.int32))
  for _ in range(n):
    state, _ = upd(state, _batch(), frozen)
  return state, frozen, effective


def test_zero_init_adapters_give_the_base_logits_exactly():
  cfg, gd, params = _model()
  spec = lora.make_spec(cfg, 4, 8.0, "q,k,v,o,gate,up,down")
  ad = lora.init_adapters(cfg, spec, jax.random.PRNGKey(1))
  base = _logits(gd, params, TOKENS)
  # The adapter path inside the projections (the trainer's) and the merged weights.
  np.testing.assert_array_equal(_logits(gd, params, TOKENS, lora.decoder_adapters(spec, ad)),
                                base)
  eff = jax.jit(lambda p, a: lora.effective_params(spec, p, a))(params, ad)
  np.testing.assert_array_equal(_logits(gd, eff, TOKENS), base)


def test_adapter_path_equals_merged_weights_in_scan_and_unrolled_layers():
  cfg, gd, params = _model()
  spec = lora.make_spec(cfg, 4, 8.0, "q,k,v,o,gate,up,down")
  ad = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
                    lora.init_adapters(cfg, spec, jax.random.PRNGKey(1)))
  merged = np.asarray(_logits(gd, lora.effective_params(spec, params, ad), TOKENS))
  assert np.abs(merged - np.asarray(_logits(gd, params, TOKENS))).max() > 1e-2
  got = np.asarray(_logits(gd, params, TOKENS, lora.decoder_adapters(spec, ad)))
  np.testing.assert_allclose(got, merged, atol=2e-5)
  B, T = TOKENS.shape
  layers = models.unstack_layers(cfg, params, lora.decoder_adapters(spec, ad))
  unrolled = models.forward(gd, params, TOKENS, jnp.broadcast_to(jnp.arange(T), (B, T)),
                            jnp.ones((B, T), bool), layers=layers)[0]
  np.testing.assert_allclose(np.asarray(unrolled), merged, atol=2e-5)


def test_only_adapters_train_and_the_base_is_untouched():
  cfg, gd, params = _model()
  spec = lora.make_spec(cfg, 4, 8.0, "layers/(q|v|down)")
  assert spec.targets == ("q", "v", "down")
  before = jax.tree.map(lambda x: np.asarray(x), params)
  state, frozen, _ = _trained(spec, cfg, gd, params)
  # The optimizer state holds exactly the adapter tree (Adam's mu and nu).
  adam = state.opt_state[0]
  for moments in (adam.mu, adam.nu):
    assert jax.tree.structure(moments) == jax.tree.structure(state.params)
    assert [x.shape for x in jax.tree.leaves(moments)] == [
        x.shape for x in jax.tree.leaves(state.params)]
  assert lora.num_bytes(state.params) < 0.2 * lora.num_bytes(params)
  # Adapters moved (B left zero), the base is neither changed nor donated.
  assert all(float(jnp.abs(state.params[n]["b"]).max()) > 0 for n in spec.targets)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(frozen["params"])):
    np.testing.assert_array_equal(a, np.asarray(b))


def _hf_logits(model, tokens):
  import torch
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.float().numpy()


def test_merged_and_peft_exports_match_rlx_in_transformers(tmp_path):
  from peft import PeftModel
  from transformers import AutoModelForCausalLM
  cfg, gd, params = _model()
  spec = lora.make_spec(cfg, 4, 8.0, "q,k,v,o,gate,up,down")
  state, frozen, effective = _trained(spec, cfg, gd, params)
  eff = lora.effective_params(spec, params, state.params)
  p, ad = effective(state.params, frozen, None)
  want = np.asarray(_logits(gd, p, TOKENS, ad))
  assert np.abs(want - np.asarray(_logits(gd, params, TOKENS))).max() > 1e-3  # adapters matter
  hf_io.save_hf(tmp_path / "merged", cfg, jax.device_get(eff))
  merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype="float32")
  np.testing.assert_allclose(_hf_logits(merged, TOKENS), want, atol=1e-4)
  hf_io.save_hf(tmp_path / "base", cfg, jax.device_get(params))
  lora.export_peft(str(tmp_path / "peft"), cfg, spec, state.params, str(tmp_path / "base"))
  base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", torch_dtype="float32")
  peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
  np.testing.assert_allclose(_hf_logits(peft_model, TOKENS), want, atol=1e-4)


def test_qlora_int8_base_dequantizes_per_output_channel():
  cfg, gd, params = _model()
  spec = lora.make_spec(cfg, 4, 8.0, "q,o,down", quantize="int8")
  q, scales = lora.quantize_base(spec, params)
  assert q["layers"]["q"][...].dtype == jnp.int8 and params["layers"]["q"][...].dtype != jnp.int8
  assert scales["q"].shape == (2, 1, 4, 8) and scales["o"].shape == (2, 1, 1, 32)
  eff = lora.effective_params(spec, q, {}, scales)
  for n in spec.targets:
    w, e = np.asarray(params["layers"][n][...]), np.asarray(eff["layers"][n][...])
    s = np.asarray(scales[n])
    assert np.abs(w - e).max() <= 0.5 * s.max() + 1e-7  # round-to-nearest int8
  base, deq = _logits(gd, params, TOKENS), _logits(gd, eff, TOKENS)
  assert float(jnp.abs(base - deq).max()) < 2e-2
  # The decoder dequantizes per layer inside its scan: the same model.
  per_layer = _logits(gd, q, TOKENS, lora.decoder_adapters(spec, {}, scales))
  np.testing.assert_allclose(np.asarray(per_layer), np.asarray(deq), atol=1e-5)
  # Training on the int8 base moves only the adapters too.
  state, frozen, _ = _trained(spec, cfg, gd, q, scales, n=2)
  assert frozen["params"]["layers"]["q"][...].dtype == jnp.int8
  assert float(jnp.abs(state.params["q"]["b"]).max()) > 0


def test_sampler_adapter_path_matches_merged_weights():
  from rlx import sampling
  cfg, gd, params = _model()
  spec = lora.make_spec(cfg, 4, 8.0, "q,o,down", quantize="int8")
  q, scales = lora.quantize_base(spec, params)
  ad = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
                    lora.init_adapters(cfg, spec, jax.random.PRNGKey(1)))
  st = sampling.SamplingSettings(max_new_tokens=6, group_size=2)
  mask = jnp.ones((2, 5), bool)
  merged = sampling.sample(gd, lora.effective_params(spec, q, ad, scales), TOKENS[:, :5], mask,
                           jax.random.PRNGKey(4), st)
  path = sampling.sample(gd, q, TOKENS[:, :5], mask, jax.random.PRNGKey(4), st,
                         adapters=lora.decoder_adapters(spec, ad, scales))
  np.testing.assert_array_equal(path.completion_tokens, merged.completion_tokens)
  np.testing.assert_allclose(path.sample_logprobs, merged.sample_logprobs, atol=1e-4)


def test_lora_dropout_is_on_the_adapter_input_in_training_only():
  from rlx.models.decoder import _adapted_proj
  from rlx.train.rl_setup import Lora
  cfg, gd, params = _model()
  spec = lora.make_spec(cfg, 4, 8.0, "q,v", dropout=0.5)
  ad = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
                    lora.init_adapters(cfg, spec, jax.random.PRNGKey(1)))
  key = jax.random.PRNGKey(9)
  # No key (eval, sampling, reference): no dropout.
  off = lora.decoder_adapters(lora.make_spec(cfg, 4, 8.0, "q,v"), ad)
  np.testing.assert_array_equal(_logits(gd, params, TOKENS, lora.decoder_adapters(spec, ad)),
                                _logits(gd, params, TOKENS, off))
  # With a key, only the adapter path drops: zero-init B gives the base exactly.
  zero = lora.init_adapters(cfg, spec, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(
      _logits(gd, params, TOKENS, lora.decoder_adapters(spec, zero, key=key)),
      _logits(gd, params, TOKENS))
  # One projection: each key drops a different ~half of x's entries (scaled by 2);
  # over keys the adapter term averages to the undropped one (E[drop(x)] = x).
  w = params["layers"]["q"][...][0]
  x = jax.random.normal(jax.random.PRNGKey(4), (1, 3, 32))
  lp = lambda k: {"q": w, "adapters": lora.decoder_adapters(
      spec, jax.tree.map(lambda t: t[0], ad), key=k)}
  base = _adapted_proj(x, {"q": w}, "q", jnp.float32)
  clean = _adapted_proj(x, lp(None), "q", jnp.float32) - base
  keys = jax.random.split(key, 4000)
  drops = jax.vmap(lambda k: _adapted_proj(x, lp(k), "q", jnp.float32) - base)(keys)
  assert float(jnp.abs(drops[0] - drops[1]).max()) > 1e-3
  err = float(jnp.abs(drops.mean(0) - clean).max() / jnp.abs(clean).max())
  assert err < 0.06, err
  # The trainer: dropout keys come from the update's step (resume-exact), none without a step.
  run_lora = Lora(spec, {"params": params, "scales": {}, "key": key})
  assert run_lora.effective(ad, run_lora.frozen)[1].key is None
  k1, k2 = (run_lora.effective(ad, run_lora.frozen, jnp.int32(s))[1].key for s in (1, 2))
  assert not np.array_equal(k1, k2)
  np.testing.assert_array_equal(k1, run_lora.effective(ad, run_lora.frozen, jnp.int32(1))[1].key)


def test_qlora_int4_base_per_group_scales_error_bound_and_memory(monkeypatch):
  monkeypatch.setattr(lora, "INT4_GROUP", 16)
  cfg, gd, params = _model()
  spec4 = lora.make_spec(cfg, 4, 8.0, "q,o,down", quantize="int4")
  q4, s4 = lora.quantize_base(spec4, params)
  assert q4["layers"]["q"][...].dtype == jnp.int4
  # One scale per 16 inputs of the last input axis (D = 32, E = 8, F = 64).
  assert s4["q"].shape == (2, 2, 1, 4, 8) and s4["o"].shape == (2, 4, 1, 1, 32)
  assert s4["down"].shape == (2, 4, 1, 32)
  eff = lora.effective_params(spec4, q4, {}, s4)
  for n, a in (("q", 1), ("o", 2), ("down", 1)):  # round to nearest: |w - q s| <= s / 2
    w, e = np.asarray(params["layers"][n][...]), np.asarray(eff["layers"][n][...])
    s = np.asarray(s4[n])
    g = lambda x: x.reshape(x.shape[:a] + (s.shape[a], -1) + x.shape[a + 1:])
    assert (np.abs(g(w) - g(e)) <= 0.5 * s + 1e-7).all()
    assert np.abs(w - e).max() > 0.1 * s.max()  # int4 is coarse: the test can fail
  base = _logits(gd, params, TOKENS)
  per_layer = _logits(gd, q4, TOKENS, lora.decoder_adapters(spec4, {}, s4))
  np.testing.assert_allclose(np.asarray(per_layer), np.asarray(_logits(gd, eff, TOKENS)),
                             atol=1e-5)
  assert float(jnp.abs(per_layer - base).max()) < 0.1
  # XLA stores int4 packed: the compiled forward's int4 base takes half the
  # int8 base's bytes for the quantized weights (scales aside).
  spec8 = lora.make_spec(cfg, 4, 8.0, "q,o,down", quantize="int8")
  q8, s8 = lora.quantize_base(spec8, params)
  arg_bytes = lambda p, sc, spec: jax.jit(lambda p, sc: _logits(
      gd, p, TOKENS, lora.decoder_adapters(spec, {}, sc))).lower(p, sc).compile(
      ).memory_analysis().argument_size_in_bytes
  b4, b8 = arg_bytes(q4, s4, spec4), arg_bytes(q8, s8, spec8)
  w8 = sum(lora.num_bytes(q8["layers"][n][...]) for n in spec8.targets)
  extra_scales = lora.num_bytes(s4) - lora.num_bytes(s8)
  assert b8 - b4 == w8 // 2 - extra_scales, (b8, b4, w8, extra_scales)


def _cfg(**lora_kw):
  from rlx.train.config import base_config
  c = base_config()
  c.model.init = "random"
  c.rewards = {"x": {"fn": "arith/correct", "weight": 1.0}}
  c.model.lora.update(lora_kw)
  return c


@pytest.mark.parametrize("kw,needle", [
    (dict(rank=4, targets="layers/attn_norm"), "matches no projection; valid: q, k, v, o, gate"),
    (dict(rank=4, targets="q,zz"), "matches no projection"),
    (dict(rank=100), "rank=100 exceeds projection 'k' (128 x 64); valid: 1..64"),
    (dict(rank=4, quantize="nf9"), "quantize='nf9' is not one of 'none', 'int8', 'int4'"),
    (dict(rank=4, dropout=1.0), "dropout=1.0; valid: 0.0 <= dropout < 1.0"),
])
def test_bad_lora_config_is_one_line_error(kw, needle):
  from rlx.train.config import validate
  with pytest.raises(ValueError) as e:
    validate(_cfg(**kw))
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_lora_with_a_reward_model_head_is_an_error():
  from rlx.train.config import validate
  c = _cfg(rank=4)
  c.trainer = "reward_model"
  with pytest.raises(ValueError, match="reward-model head.*valid: trainer 'rl' or rank=0"):
    validate(c)
  rm_cfg = models.ModelConfig.from_hf(dict(HF, architectures=["LlamaForSequenceClassification"],
                                           num_labels=1))
  with pytest.raises(ValueError, match="reward-model head"):
    lora.make_spec(rm_cfg, 4, 8.0, "q")


# ---- the RL trainer with LoRA: kill and resume is bitwise ------------------------
from tests.test_train import _cmd, _env, _metrics, _wait_for_rows, data_file  # noqa: E402,F401

LORA_FLAGS = ("--config.model.lora.rank=4", "--config.model.lora.quantize=int4",
              "--config.model.lora.dropout=0.1")


def test_lora_rl_kill_and_resume_is_bitwise_and_exports(data_file, tmp_path):  # noqa: F811
  wd_a = str(tmp_path / "a")
  p = subprocess.run(_cmd(wd_a, data_file, *LORA_FLAGS), env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert os.path.exists(os.path.join(wd_a, "peft", "adapter_config.json"))
  assert os.path.exists(os.path.join(wd_a, "hf", "config.json"))
  wd_b = str(tmp_path / "b")
  proc = subprocess.Popen(_cmd(wd_b, data_file, *LORA_FLAGS), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_rows(proc, wd_b, 3)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  p = subprocess.run(_cmd(wd_b, data_file, *LORA_FLAGS), env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _metrics(wd_b) == _metrics(wd_a)
  from safetensors.numpy import load_file
  a, b = (load_file(os.path.join(wd, "peft", "adapter_model.safetensors")) for wd in (wd_a, wd_b))
  assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
  assert any(abs(v).max() > 0 for k, v in a.items() if "lora_B" in k)  # the adapters trained


# ---- LoRA on the 2x2x2 mesh equals the 1-device run ----------------------------


def test_lora_rl_on_2x2x2_mesh_equals_one_device(data_file, tmp_path):  # noqa: F811
  """`rlx.main` with QLoRA int8 + dropout for 2 steps (8 updates) on 8 simulated
  devices (data x fsdp x tensor = 2 x 2 x 2) and on 1: the same metrics (to the
  full-weight mesh test's tolerance), adapters and base sharded on the mesh."""
  from tests import test_parallel_train as tp
  flags = ("--config.model.lora.rank=4", "--config.model.lora.quantize=int8",
           "--config.model.lora.dropout=0.1")
  wd = {k: str(tmp_path / k) for k in ("one", "mesh")}
  jobs = [tp._Job("one", tp._cli(wd["one"], data_file, 2, "--config.mesh.axes.data=1", *flags),
                  devices=1, logdir=str(tmp_path)),
          tp._Job("mesh", tp._cli(wd["mesh"], data_file, 2, "--config.mesh.axes.data=2",
                                  "--config.mesh.axes.fsdp=2", "--config.mesh.axes.tensor=2",
                                  *flags), devices=8, logdir=str(tmp_path))]
  try:
    for j in jobs:
      j.wait()
  finally:
    for j in jobs:
      j.kill()
  one, mesh = tp._metrics(wd["one"]), tp._metrics(wd["mesh"])
  assert sorted(one) == sorted(mesh) == [0, 1, 2]
  tp._assert_rows_close(mesh, one, [0, 1, 2])
  assert one[2]["loss"] != 0.0 and "eval/correct" in one[2]
  probe = tp._probe(wd["mesh"])
  assert probe["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  # The train state is the adapters: A [L, in, r] split like its weight's input
  # axes (fsdp), B [L, r, out] like its outputs (tensor); the int8 base too.
  assert probe["params"]["up/a"] == [[2, 32, 4], [2, 16, 4], 8]
  assert probe["params"]["up/b"] == [[2, 4, 64], [2, 4, 32], 8]
  assert probe["new_params"] == probe["params"]
  assert probe["frozen"]["layers/up/value"] == [[2, 32, 64], [2, 16, 32], 8]
  assert set(probe["params"]) == {f"{n}/{m}" for n in lora.TARGETS for m in "ab"}
