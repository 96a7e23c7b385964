"""The reward-model trainer with the ordinal (OPRM), multi-response and
multi-attribute losses: each learns its synthetic rule on held-out rows, and
its export scores with the trained reward through rlx's reward function."""
import json
import os

import numpy as np
import pytest

from rlx.data.preferences import make_attribute_rows, make_multi_response_rows, true_reward
from rlx.rewards import reward_models as rms
from rlx.train import config as config_lib
from rlx.train import reward_model as rm_train

# loss -> (config argument, held-out accuracy it must reach; chance is 1/2, 1/4, 1/2)
CASES = {"ordinal": ("loss=ordinal,num_ratings=5", .9),
         "multi_response": ("loss=multi_response", .8),
         "multi_attribute": ("loss=multi_attribute,attribute_weights=1+0", .9)}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request, tmp_path_factory):
  arg, bar = CASES[request.param]
  cfg = config_lib.load_config("reward_model.py",
                               arg + ",steps=40,batch=16,num_eval=60,num_train=200,lr=3e-3")
  cfg.model.arch.hidden_size = 32
  cfg.model.arch.intermediate_size = 64
  cfg.train.eval_every = 20
  cfg.train.progress = False
  config_lib.validate(cfg)
  workdir = str(tmp_path_factory.mktemp(request.param))
  return request.param, bar, workdir, rm_train.train_reward_model(cfg, workdir)


def test_each_loss_learns_its_rule_and_exports_its_reward(trained):
  loss, bar, workdir, result = trained
  assert result["loss"] == loss and result["eval/accuracy"] >= bar, result
  assert np.isfinite(result["eval/loss"])
  with open(os.path.join(workdir, "hf", rms.META_FILE)) as f:
    meta = json.load(f)
  assert meta["head"] == {"ordinal": "expected_rating", "multi_response": 0,
                          "multi_attribute": [1.0, 0.0]}[loss]
  fn = rms.make_reward_model_fn(os.path.join(workdir, "hf"))
  rows = make_attribute_rows(40, seed=99)
  texts = [r["response"] for r in rows]
  scores = np.asarray(fn([r["prompt"] for r in rows], texts))
  truth = np.asarray([true_reward("count", r["prompt"], t) for r, t in zip(rows, texts)])
  assert np.corrcoef(scores, truth)[0, 1] > .8        # the export ranks by the rule
  if loss == "ordinal":
    assert ((1 <= scores) & (scores <= 5)).all()      # E[rating] on the 1..5 scale
    model = rms.get_reward_model(os.path.join(workdir, "hf"))
    logits = model.score([r["prompt"] for r in rows], texts)
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(scores, (p / p.sum(1, keepdims=True)) @ np.arange(1, 6),
                               rtol=1e-5)


def test_layout_errors_and_config_variants(tmp_path):
  cfg = config_lib.load_config("reward_model.py", "loss=ordinal,regions=1-4+6-9")
  assert cfg.data.task == "pref_count" and cfg.rm.regions == ((1, 4), (6, 9))
  assert config_lib.load_config("reward_model.py", "loss=multi_response").data.task == \
      "multi_count"
  rm = rm_train.rm_settings(config_lib.load_config("reward_model.py", "loss=multi_attribute"))
  assert rm_train.num_labels(dict(rm, attributes=("x", "y", "z"))) == 3
  for arg in ("loss=multi_response", "loss=multi_attribute", "loss=ordinal", f"path={tmp_path}"):
    config_lib.check_names(config_lib.load_config("reward_model.py", arg))
  bad = config_lib.load_config("reward_model.py", "loss=multi_response")
  bad.data.task = "pref_count"
  with pytest.raises(ValueError, match="rm.loss='multi_response'; valid: file, multi_count"):
    config_lib.check_names(bad)
  with pytest.raises(ValueError, match="valid choices: file, multi_count"):
    rm_train.load_preference_rows(bad, rm_train.rm_settings(bad))
  path = tmp_path / "attr.jsonl"
  path.write_text(json.dumps({"prompt": "p", "response": "r", "other": 1}) + "\n")
  bad = config_lib.load_config("reward_model.py", f"loss=multi_attribute,path={path},"
                               "attributes=helpfulness+verbosity")
  with pytest.raises(ValueError, match="none of the attribute columns"):
    rm_train.load_preference_rows(bad, rm_train.rm_settings(bad))
  rows = make_multi_response_rows(20, m=3, seed=1)
  for r in rows:
    counts = [t.count("a") for t in r["responses"]]
    assert len(set(counts)) == 3 and r["best"] == int(np.argmax(counts))


def test_ordinal_pairs_carry_region_labels_into_the_loss():
  import jax.numpy as jnp

  from rlx.losses.reward_model import oprm_loss
  rm = rm_train.rm_settings(config_lib.load_config("reward_model.py",
                                                   "loss=ordinal,num_ratings=4,regions=1-2+3-4"))
  rows = rm_train._clean([{"prompt": "p", "chosen": "a", "rejected": "b", "region_chosen": 1},
                          {"prompt": "p", "chosen": "a", "rejected": "b", "tie": True},
                          {"prompt": "p", "chosen": "a", "rejected": "b",
                           "region_chosen": 1, "region_rejected": 0}], "pairs", rm)
  tie = np.array([0., 1., 0.], np.float32)
  region_c, region_r = np.array([1, -1, 1]), np.array([-1, -1, 0])
  batch = dict(mask_N=jnp.ones(3), tie_N=jnp.asarray(tie), margin_N=jnp.zeros(3),
               region_chosen_N=jnp.asarray(region_c), region_rejected_N=jnp.asarray(region_r))
  assert [r["region_chosen"] for r in rows] == [1, -1, 1]
  assert [r["region_rejected"] for r in rows] == [-1, -1, 0]
  rng = np.random.default_rng(0)
  lc, lr = (jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for _ in range(2))
  loss, _ = rm_train.preference_loss(lc, lr, batch, rm)
  ref, _ = oprm_loss(lc, lr, region_c_N=jnp.asarray(region_c), region_r_N=jnp.asarray(region_r),
                     regions=((1, 2), (3, 4)), mask_N=jnp.asarray([True, False, True]))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  plain, _ = oprm_loss(lc, lr, mask_N=jnp.asarray([True, False, True]))
  assert abs(float(plain) - float(ref)) > 1e-3       # the regions change the loss
