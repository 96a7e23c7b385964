"""Reward-model training: learns a known ranking rule; export loads in transformers."""
import json
import math
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from rlx.data.preferences import make_preference_rows, true_reward, write_jsonl
from rlx.rewards import reward_models as rms
from rlx.train import config as config_lib
from rlx.train import reward_model as rm_train
from rlx.train.metrics import read_jsonl
from rlx.train.scoring import build_rewards

torch = pytest.importorskip("torch")


def _config(path: str, **kw):
  arg = ",".join([f"path={path}", "steps=60", "batch=32", "num_eval=100"]
                 + [f"{k}={v}" for k, v in kw.items()])
  cfg = config_lib.load_config("reward_model.py", arg)
  cfg.model.arch.hidden_size = 32
  cfg.model.arch.intermediate_size = 64
  cfg.train.eval_every = 30
  cfg.train.ckpt_every = 30
  return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny RM (hidden 32) trained 60 steps on 300 'more a's is better' pairs."""
  root = tmp_path_factory.mktemp("rm_train")
  data = write_jsonl(make_preference_rows("count", 300, seed=3), root / "prefs.jsonl")
  cfg = _config(data)
  workdir = str(root / "run")
  result = rm_train.train_reward_model(cfg, workdir)
  return cfg, workdir, result


def test_synthetic_preferences_follow_their_rule():
  rows = make_preference_rows("count", 50, seed=1, tie_rate=0.3)
  assert rows == make_preference_rows("count", 50, seed=1, tie_rate=0.3)
  ties = [r for r in rows if r["tie"]]
  assert 5 <= len(ties) <= 30
  for r in rows:
    rc, rr = (true_reward("count", r["prompt"], r[k]) for k in ("chosen", "rejected"))
    assert len(r["chosen"]) == len(r["rejected"]) == 12
    assert (rc == rr) if r["tie"] else (rc > rr)
  for r in make_preference_rows("arith", 50, seed=2, tie_rate=0.2):
    rc, rr = (true_reward("arith", r["prompt"], r[k]) for k in ("chosen", "rejected"))
    assert (rc, rr) == ((0.0, 0.0) if r["tie"] else (1.0, 0.0))
    assert r["chosen"] != r["rejected"]
  with pytest.raises(ValueError, match="Unknown preference rule 'len'. Valid choices: "
                     "count, arith"):
    make_preference_rows("len")


def test_reaches_high_heldout_accuracy(trained):
  _, workdir, result = trained
  assert result["eval/num_rows"] == 100 and result["num_train_rows"] == 200
  assert result["eval/accuracy"] >= 0.85, result
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in rows if "eval/accuracy" in r]
  assert [r["step"] for r in evals] == [30, 60]
  losses = [r["rm/loss"] for r in rows if "rm/loss" in r]
  assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
  assert 0 <= rows[-1]["rm/accuracy"] <= 1
  # A finished run returns its stored result.
  assert rm_train.train_reward_model(trained[0], workdir) == json.loads(json.dumps(result))


def test_export_matches_transformers_and_ranks_by_rule(trained):
  _, workdir, _ = trained
  hf = os.path.join(workdir, "hf")
  from transformers import AutoModelForSequenceClassification
  tmodel = AutoModelForSequenceClassification.from_pretrained(hf, dtype=torch.float32).eval()
  assert json.load(open(os.path.join(hf, rms.META_FILE)))["template"] == "concat"
  rows = make_preference_rows("count", 12, seed=99)
  prompts = [r["prompt"] for r in rows] * 2
  comps = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
  model = rms.RewardModel.load(hf)
  seqs = model.encode(prompts, comps)
  tokens, mask = rms.pad_rows(seqs, 32, model.pad_id, side="right")
  with torch.no_grad():
    ref = tmodel(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)).logits[:, 0].numpy()
  ours = np.asarray(rms.make_reward_model_fn(hf, batch_size=8)(prompts, comps))
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  assert np.std(ref) > 0.5
  spec = build_rewards({"rm": {"fn": "reward_model", "weight": 1.0,
                               "kwargs": {"checkpoint": hf}}})[0]
  np.testing.assert_allclose(spec.fn(prompts, comps), ref, atol=1e-4)
  # Scores rank fresh responses by their number of 'a's.
  truth = np.asarray([true_reward("count", p, c) for p, c in zip(prompts, comps)])
  rank = lambda x: np.argsort(np.argsort(x))
  assert np.corrcoef(rank(ours), rank(truth))[0, 1] > 0.9


def test_resume_from_checkpoint_is_exact(trained, tmp_path):
  cfg, workdir, _ = trained
  wd = str(tmp_path / "resumed")
  shutil.copytree(workdir, wd)
  for name in ("hf", rm_train.RESULT_FILE):
    p = os.path.join(wd, name)
    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  shutil.rmtree(os.path.join(wd, "checkpoints", "60"), ignore_errors=True)
  res = rm_train.train_reward_model(cfg, wd)  # resumes at step 30
  rows = read_jsonl(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
  prompts, comps = ["Write a and b:"] * 3, ["aaaabbbbbbbb", "abababababab", "bbbbbbbbbbbb"]
  a = rms.make_reward_model_fn(os.path.join(workdir, "hf"))(prompts, comps)
  b = rms.make_reward_model_fn(os.path.join(wd, "hf"))(prompts, comps)
  np.testing.assert_allclose(a, b, atol=1e-5)
  assert res["eval/accuracy"] == pytest.approx(trained[2]["eval/accuracy"])


def test_preference_loss_hand_computed():
  sp = lambda x: math.log1p(math.exp(x))  # -log sigmoid(-x)
  rc, rr = jnp.array([2.0, 0.0, 1.0, 9.0]), jnp.array([0.5, 1.0, 1.5, -9.0])
  batch = {"mask_N": jnp.array([1.0, 1.0, 1.0, 0.0]), "tie_N": jnp.array([0.0, 0.0, 1.0, 0.0]),
           "margin_N": jnp.array([0.0, 1.0, 0.0, 0.0])}
  rm = dict(rm_train.RM_DEFAULTS, margin=0.5, center_coef=0.01)
  loss, m = rm_train.preference_loss(rc, rr, batch, rm)  # tie and padding rows dropped
  want = (sp(-(1.5 - 0.5)) + 0.01 * 2.5 ** 2 + sp(-(-1.0 - 1.5)) + 0.01 * 1.0) / 2
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(m["accuracy"]) == pytest.approx(0.5)
  rm = dict(rm_train.RM_DEFAULTS, loss="soli_tie", tie_margin=0.2)
  loss, m = rm_train.preference_loss(rc, rr, batch, rm)
  tie = sp(-(-0.5 - 0.2)) + sp(-(0.5 - 0.2))
  assert float(loss) == pytest.approx((sp(-1.5) + sp(-(-1.0 - 1.0)) + tie) / 3, rel=1e-6)
  assert float(m["tie_abs_gap"]) == pytest.approx(0.5)


def test_config_and_errors(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cfg = config_lib.load_config("reward_model.py", "path=p.jsonl,loss=soli_tie,steps=7,lr=0.01")
  if "rm" in config_lib.base_config():
    with pytest.raises(ValueError, match="config.data.path='p.jsonl' does not exist"):
      config_lib.validate(cfg)
  (tmp_path / "p.jsonl").write_text("")
  assert (cfg.trainer, cfg.data.task, cfg.data.path, cfg.train.steps) == (
      "reward_model", "file", "p.jsonl", 7)
  assert cfg.rm.loss == "soli_tie" and cfg.optim.lr == 0.01
  assert config_lib.load_config("reward_model.py").data.task == "pref_count"
  if "rm" in config_lib.base_config():
    config_lib.validate(cfg)
  with pytest.raises(ValueError, match="config.rm.loss='ordnal'; valid choices: "
                     "bradley_terry, soli_tie, ordinal, multi_response, multi_attribute"):
    rm_train.rm_settings(config_lib.load_config("reward_model.py", "loss=ordnal"))
  bad = config_lib.load_config("reward_model.py")
  bad.data.task = "toolcall"
  with pytest.raises(ValueError, match="data.task='toolcall'; valid choices: file, pref_count"):
    rm_train.load_preference_rows(bad, rm_train.RM_DEFAULTS)
  bad.model.init = "sft"
  with pytest.raises(ValueError, match="model.init='sft'; valid choices: checkpoint, random"):
    rm_train.init_reward_model(bad, str(tmp_path))


def test_init_from_hf_checkpoints(tmp_path):
  from flax import nnx
  from rlx import testing
  from rlx.models import hf_io
  lm = testing.make_tiny_checkpoint(tmp_path / "lm", "qwen3", tied=False)
  cfg = config_lib.load_config("reward_model.py", f"init=checkpoint,checkpoint={lm}")
  mcfg, _, params, tok = rm_train.init_reward_model(cfg, str(tmp_path))
  assert mcfg.architectures == ("Qwen3ForSequenceClassification",) and mcfg.num_labels == 1
  assert tok.pad_token_id == 0 and mcfg.pad_token_id == 0
  _, _, lm_params = hf_io.load_hf(lm)
  got, ref = nnx.to_pure_dict(params), nnx.to_pure_dict(lm_params)
  assert "lm_head" not in got and got["score"].shape == (32, 1)
  assert 0.005 < float(np.std(got["score"])) < 0.05  # new head: N(0, 0.02)
  np.testing.assert_array_equal(got["layers"]["q"], ref["layers"]["q"])
  np.testing.assert_array_equal(got["embed"], ref["embed"])
  seq = testing.make_tiny_checkpoint(tmp_path / "seq", "llama", seq_cls=True)
  cfg.model.checkpoint = seq
  _, _, params, _ = rm_train.init_reward_model(cfg, str(tmp_path))
  _, _, seq_params = hf_io.load_hf(seq)
  np.testing.assert_array_equal(nnx.to_pure_dict(params)["score"],
                                nnx.to_pure_dict(seq_params)["score"])
  cfg.model.checkpoint = testing.make_tiny_checkpoint(tmp_path / "s3", "llama", seq_cls=True,
                                                      num_labels=3)
  with pytest.raises(ValueError, match="has 3 labels; this loss trains a 1-label head"):
    rm_train.init_reward_model(cfg, str(tmp_path))
