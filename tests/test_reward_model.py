"""Reward-model heads (*ForSequenceClassification): parity with transformers, I/O."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx import testing
from rlx.models import (forward, load_reward_model, reward_model_from_lm,
                        save_reward_model, score)
from rlx.models.hf_io import load_hf
from rlx.models.reward_model import last_token_index

pytest.importorskip("torch")

_score = jax.jit(score, static_argnums=0)
_hidden = jax.jit(lambda g, p, t, m: forward(g, p, t, jnp.maximum(jnp.cumsum(m, 1) - 1, 0), m,
                                             return_hidden=True)[0], static_argnums=0)


def _torch_scores(tmodel, tokens, mask, positions=None):
  return testing.torch_logits(tmodel, tokens, mask, positions)  # pooled [B, L]


@pytest.mark.parametrize("family,num_labels,tied", [
    ("llama", 1, False), ("qwen2", 3, True), ("qwen3", 2, False)])
def test_score_parity_left_and_right_padded(tmp_path, family, num_labels, tied):
  d = testing.make_tiny_checkpoint(tmp_path, family, seq_cls=True, num_labels=num_labels,
                                   tied=tied, rope_scaling=family == "llama")
  tmodel = testing.load_torch_model(d)
  cfg, graphdef, params = load_reward_model(d)
  assert cfg.is_reward_model and cfg.num_labels == num_labels
  assert "lm_head" not in params and params["score"].shape == (cfg.hidden_size, num_labels)
  for side in ("left", "right"):
    tokens, mask = testing.padded_batch(7, 4, 11, side=side)  # pads are pad_token_id 0
    positions = np.asarray(jax.numpy.maximum(np.cumsum(mask, 1) - 1, 0))
    ref = _torch_scores(tmodel, tokens, mask, positions)
    ours = np.asarray(_score(graphdef, params, tokens, mask))
    assert ours.shape == (4, num_labels)
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 and np.abs(ref).max() > 0.5, (side, err)


def test_last_token_index():
  mask = np.array([[0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]], bool)
  np.testing.assert_array_equal(last_token_index(mask), [3, 1, 3, 1])


def test_save_reward_model_roundtrip(tmp_path):
  d = testing.make_tiny_checkpoint(tmp_path / "src", "qwen2", seq_cls=True, num_labels=2)
  cfg, graphdef, params = load_reward_model(d)
  params = jax.tree.map(lambda x: x * 1.5, params)  # something transformers has not seen
  save_reward_model(tmp_path / "dst", cfg, params)
  tmodel = testing.load_torch_model(tmp_path / "dst")
  assert type(tmodel).__name__ == "Qwen2ForSequenceClassification"
  assert tmodel.config.num_labels == 2
  tokens, mask = testing.padded_batch(8, 3, 9, side="right")
  ref = _torch_scores(tmodel, tokens, mask)
  ours = np.asarray(_score(graphdef, params, tokens, mask))
  assert np.abs(ours - ref).max() <= 1e-4


def test_reward_model_from_lm(tmp_path):
  d = testing.make_tiny_checkpoint(tmp_path, "qwen3", tied=False)
  cfg, graphdef, params = load_hf(d)
  rm_cfg, rm_graphdef, rm_params = reward_model_from_lm(cfg, params, jax.random.key(0),
                                                        num_labels=3)
  assert rm_cfg.architectures == ("Qwen3ForSequenceClassification",)
  assert "lm_head" not in rm_params and rm_params["score"].shape == (cfg.hidden_size, 3)
  tokens, mask = testing.padded_batch(9, 2, 8)
  h_lm = _hidden(graphdef, params, tokens, mask)  # same backbone: LM hidden states
  s = _score(rm_graphdef, rm_params, tokens, mask)
  np.testing.assert_allclose(s, h_lm[:, -1] @ rm_params["score"][...], atol=1e-5)


def test_errors(tmp_path):
  d = testing.make_tiny_checkpoint(tmp_path, "llama")
  with pytest.raises(ValueError, match="LlamaForCausalLM.*Valid choices: "
                     "LlamaForSequenceClassification"):
    load_reward_model(d)
  cfg, graphdef, params = load_hf(d)
  tokens, mask = testing.padded_batch(0, 2, 5)
  with pytest.raises(ValueError, match="needs a reward-model config"):
    score(graphdef, params, tokens, mask)
  with pytest.raises(ValueError, match="needs a reward-model config"):
    save_reward_model(tmp_path / "x", cfg, params)
