"""The decoder's attention choice (ModelConfig.attention): blockwise == dense
through the real decoder (logits, gradients), and config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx import models, testing
from rlx.models.logprobs import token_logprobs
from rlx.train import config as config_lib


def _cfg(family, **kw):
  return models.ModelConfig.for_family(
      family, vocab_size=testing.TOKENIZER_SIZE, hidden_size=32, intermediate_size=64,
      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, **kw)


def test_blockwise_block_cuts_a_length_into_the_fewest_blocks():
  """(block, padding): the configured block if it covers or divides T, else the
  fewest blocks of at most it, rounded up to multiples of 8."""
  from rlx.models.decoder import blockwise_block
  assert blockwise_block(512, 1056) == (352, 0)   # not 2 x 512 + padding to 1536
  assert blockwise_block(512, 1000) == (504, 8)
  assert blockwise_block(512, 1024) == (512, 0)
  assert blockwise_block(512, 100) == (512, 0)    # capped at T by the kernel
  assert blockwise_block(6, 16) == (6, 2)         # rounding to 8 would exceed the block
  for block in (8, 64, 100, 512):
    for length in range(1, 2100, 37):
      b, pad = blockwise_block(block, length)
      assert b <= block and (length + pad) % min(b, length + pad) == 0
      assert pad < 8 * -(-length // block) or pad < b


@pytest.mark.parametrize("family,length,blocks", [("qwen2", 16, (4, 6)), ("qwen3", 16, (4, 6)),
                                                  ("qwen2", 48, (32, 20)), ("qwen3", 40, (32, 32))])
def test_blockwise_equals_dense_through_the_decoder(family, length, blocks):
  """GQA (4 heads on 2 KV heads), qkv bias (qwen2), q/k norm (qwen3), left padding;
  16 keys in blocks of 6 are padded to 18; 48 in blocks of at most 32 / 20 run
  2 x 24 / 3 x 16 unpadded; 40 in blocks of at most 32 run 2 x 24 (8 padded)."""
  cfg = _cfg(family, attention="dense")
  _, params = models.init_model(cfg, jax.random.key(0))
  tokens, mask = testing.padded_batch(3, 3, length)
  assert mask.sum(1).min() < length
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)

  def run(attention):
    _, graphdef = models.with_attention(cfg, attention=attention, attention_block_q=blocks[0],
                                        attention_block_kv=blocks[1])
    logits, _ = models.forward(graphdef, params, tokens, models.positions_from_mask(mask), mask)

    def loss(p):
      logp, _ = token_logprobs(graphdef, p, tokens, mask, chunk_size=8)
      return logp.sum() / mask.sum()
    return logits, jax.grad(loss)(params)

  logits_d, grads_d = run("dense")
  logits_b, grads_b = run("blockwise")
  np.testing.assert_allclose(logits_b, logits_d, atol=1e-5, rtol=1e-5)
  flat_d, flat_b = jax.tree.leaves(grads_d), jax.tree.leaves(grads_b)
  assert any(float(jnp.abs(g).max()) > 1e-3 for g in flat_d)
  for gd, gb in zip(flat_d, flat_b):
    np.testing.assert_allclose(gb, gd, atol=1e-5, rtol=1e-5)


def _rl_config(**model):
  cfg = config_lib.load_config("quickstart.py")
  cfg.model.init = "random"
  cfg.data.max_prompt_len, cfg.sampling.max_new_tokens = 32, 32
  for k, v in model.items():
    setattr(cfg.model, k, v)
  return cfg


def test_attention_config_errors():
  config_lib.validate(_rl_config(attention="blockwise", attention_blocks="16,24"))
  with pytest.raises(ValueError, match=r"model.attention='flash' is not one of 'auto', "
                                       r"'blockwise', 'cudnn', 'dense', 'splash'"):
    config_lib.validate(_rl_config(attention="flash"))
  with pytest.raises(ValueError, match="attention_blocks='a' is not 'N' or 'NQ,NKV'"):
    config_lib.validate(_rl_config(attention_blocks="a"))
  with pytest.raises(ValueError, match="option attention='flash' is not one of"):
    _cfg("llama", attention="flash")
