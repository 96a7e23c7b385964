"""Reward-model training with any RM loss (rlx.train.reward_model).

    # synthetic demo: tiny random model, char tokenizer, "more a's is better"
    python -m rlx.main --config=configs/reward_model.py --workdir=runs/rm_demo
    # a local preference file (JSONL / Parquet rows: prompt, chosen, rejected[, tie])
    python -m rlx.main --config=configs/reward_model.py:path=prefs.jsonl,loss=soli_tie \
        --workdir=runs/rm
    # from a local HF causal LM (new score head)
    python -m rlx.main --config=configs/reward_model.py:path=prefs.jsonl,init=checkpoint,\
checkpoint=/models/Qwen2.5-0.5B,lr=1e-5,max_len=1024 --workdir=runs/rm

    # the other losses, each on its own synthetic data (or path=... with its layout)
    python -m rlx.main --config=configs/reward_model.py:loss=ordinal --workdir=runs/oprm
    python -m rlx.main --config=configs/reward_model.py:loss=ordinal,regions=1-4+6-9 \
        --workdir=runs/oprm_rgft
    python -m rlx.main --config=configs/reward_model.py:loss=multi_response --workdir=runs/yojo
    python -m rlx.main --config=configs/reward_model.py:loss=multi_attribute,\
attribute_weights=1+0.5 --workdir=runs/attr

Arguments: path (data file; empty -> synthetic `task`), loss (bradley_terry |
soli_tie | ordinal | multi_response | multi_attribute), task (default: the
loss's synthetic task: pref_count or pref_arith for the pair losses,
multi_count, attr_count), steps, batch (rows per step), lr, init (random |
checkpoint), checkpoint, max_len, margin, center_coef, tie_margin, num_ratings
(ordinal), regions (ordinal region flooding: lo-hi ranges joined by '+'),
attributes and attribute_weights (multi_attribute: names / numbers joined by
'+'), num_eval, seed. Data layouts: rlx/train/reward_model.py. The result is
in workdir/hf (HF layout) and carries its reward head; use it as a reward
with rewards.rm = {fn: 'reward_model', weight: 1, kwargs: {checkpoint: 'WORKDIR/hf'}}.
"""
import ml_collections as mlc

from rlx.train.config import base_config, parse_arg

DEFAULT_TASKS = {"multi_response": "multi_count", "multi_attribute": "attr_count"}


def _items(text: str) -> list[str]:
  return [x for x in text.split("+") if x]


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  a = parse_arg(arg, dict(
      path="", task="", loss="bradley_terry", steps=300, batch=32, lr=2e-3,
      init="random", checkpoint="", max_len=128, margin=0.0, center_coef=0.0,
      tie_margin=0.0, num_ratings=9, regions="", attributes="", attribute_weights="",
      num_eval=100, num_train=400, seed=0))
  task = a["task"] or DEFAULT_TASKS.get(a["loss"], "pref_count")
  c = base_config()
  c.trainer = "reward_model"
  c.seed = a["seed"]
  c.model.init = a["init"]
  c.model.checkpoint = a["checkpoint"]
  c.model.arch = mlc.ConfigDict(dict(
      model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
      rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-6))
  c.data.task = "file" if a["path"] else task
  c.data.path = a["path"]
  c.data.num_train = a["num_train"]
  c.data.num_eval = a["num_eval"]
  c.rewards = mlc.ConfigDict()
  c.optim.lr = a["lr"]
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = min(20, a["steps"] // 10)
  c.optim.weight_decay = 0.0
  c.train.steps = a["steps"]
  c.train.batch_prompts = a["batch"]
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.ckpt_every = 100
  c.rm = mlc.ConfigDict(dict(
      loss=a["loss"], margin=a["margin"], center_coef=a["center_coef"],
      tie_margin=a["tie_margin"], max_len=a["max_len"], template="concat",
      append_eos=True, eval_path="", num_ratings=a["num_ratings"],
      regions=tuple(tuple(int(x) for x in r.split("-")) for r in _items(a["regions"])),
      attributes=tuple(_items(a["attributes"])),
      attribute_weights=tuple(float(w) for w in _items(a["attribute_weights"]))))
  return c
