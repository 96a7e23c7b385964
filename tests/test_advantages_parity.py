"""Parity with the public code of each estimator, re-derived in float64 numpy
from the official implementations' formulas (dict-of-groups loops as there),
on random inputs, to 1e-6."""
import itertools
from collections import defaultdict

import jax
import numpy as np
import pytest
from scipy import stats

from rlx.advantages import AdvantageInputs, compute_advantages

TOL = dict(rtol=1e-6, atol=1e-6)


def run(name, inputs, num_groups, **options):
  fn = jax.jit(lambda i: compute_advantages(name, i, num_groups, diagnostics=False, **options)[0])
  return np.asarray(fn(inputs), np.float64)


def random_groups(rng, num_groups, min_size, max_size):
  """Shuffled group ids with random sizes (groups need not be contiguous)."""
  sizes = rng.integers(min_size, max_size + 1, num_groups)
  ids = np.repeat(np.arange(num_groups), sizes)
  return rng.permutation(ids).astype(np.int32)


# --- GDPO, TRL port (NVlabs/GDPO trl-GDPO grpo_trainer.py) ------------------


def gdpo_trl_reference(rewards, weights, num_generations):
  r = np.nan_to_num(rewards.astype(np.float64))
  per_reward = []
  for i in range(r.shape[1]):
    x = r[:, i].reshape(-1, num_generations)
    mean = np.repeat(x.mean(1), num_generations)
    std = np.repeat(x.std(1, ddof=1), num_generations)
    per_reward.append((r[:, i] - mean) / (std + 1e-4))
  pre = (np.stack(per_reward, 1) * weights[None]).sum(1)
  return (pre - pre.mean()) / (pre.std(ddof=1) + 1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gdpo_trl_port(seed):
  rng = np.random.default_rng(seed)
  g, p, k = 8, 12, 3
  r = np.stack([rng.random(g * p) < .5, rng.normal(size=g * p) * 3 + 1,
                rng.integers(-3, 4, g * p)], 1).astype(np.float32)
  r[rng.random(g * p) < .1, 1] = np.nan
  w = rng.uniform(.2, 2, k).astype(np.float32)
  inputs = AdvantageInputs.create(r, np.repeat(np.arange(p), g), weights_K=w)
  ours = run("gdpo", inputs, p, eps=1e-4, missing="zero_fill", batch_stats="sequence")
  np.testing.assert_allclose(ours, gdpo_trl_reference(r, w, g), **TOL)


# --- GDPO, verl port (NVlabs/GDPO verl-GDPO ray_trainer.py + verl core_algos) ---


def verl_grpo_outcome(scores, index, epsilon=1e-6):
  id2score = defaultdict(list)
  for i, s in enumerate(scores):
    id2score[index[i]].append(s)
  id2mean, id2std = {}, {}
  for idx, vals in id2score.items():
    if len(vals) == 1:
      id2mean[idx], id2std[idx] = 0.0, 1.0
    else:
      id2mean[idx], id2std[idx] = np.mean(vals), np.std(vals, ddof=1)
  return np.array([(s - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
                   for i, s in enumerate(scores)])


def masked_whiten(values, mask):
  mean = (values * mask).sum() / mask.sum()
  var = (((values - mean) ** 2) * mask).sum() / mask.sum()
  var = var * mask.sum() / (mask.sum() - 1)
  return (values - mean) / np.sqrt(var + 1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_gdpo_verl_port_token_whitening(seed):
  rng = np.random.default_rng(seed)
  groups = random_groups(rng, 10, 2, 6)
  n = len(groups)
  r = np.stack([rng.random(n) < .5, rng.uniform(-3, 3, n)], 1).astype(np.float32)
  lengths = rng.integers(1, 9, n)
  response_mask = (np.arange(lengths.max())[None] < lengths[:, None]).astype(np.float64)
  new_adv = sum(verl_grpo_outcome(r[:, i].astype(np.float64), groups) for i in range(2))
  token_adv = masked_whiten(new_adv[:, None] * response_mask, response_mask) * response_mask
  ref = token_adv[:, 0]                        # every sequence has >= 1 token
  inputs = AdvantageInputs.create(r, groups, lengths_N=lengths)
  ours = run("gdpo", inputs, 10, eps=1e-6, batch_stats="token")
  np.testing.assert_allclose(ours, ref, **TOL)
  # The token-level port is larger than the sequence-level one by about
  # sqrt((N L - 1) / (L (N - 1))) for equal lengths L.
  inputs_eq = AdvantageInputs.create(r, groups, lengths_N=np.full(n, 4))
  tok = run("gdpo", inputs_eq, 10, eps=1e-6, batch_stats="token")
  seq = run("gdpo", inputs_eq, 10, eps=1e-6, batch_stats="sequence", batch_eps=0.0)
  big = np.abs(seq) > 1e-3
  np.testing.assert_allclose(tok[big] / seq[big], np.sqrt((n * 4 - 1) / (4 * (n - 1))), rtol=1e-5)


# --- MRN (GDPO without the batch step) --------------------------------------


def test_mrn_formula():
  rng = np.random.default_rng(3)
  groups = random_groups(rng, 9, 2, 7)
  n = len(groups)
  r = rng.normal(size=(n, 3)).astype(np.float32)
  r[rng.random(n) < .15, 2] = np.nan
  w = np.array([1., .5, 2.], np.float32)
  ref = np.zeros(n)
  for g in range(9):
    rows = groups == g
    for k in range(3):
      x = r[rows, k].astype(np.float64)
      ok = ~np.isnan(x)
      z = np.zeros_like(x)
      if ok.sum() > 1:
        z[ok] = (x[ok] - x[ok].mean()) / (x[ok].std(ddof=1) + 1e-4)
      ref[rows] += w[k] * z
  inputs = AdvantageInputs.create(r, groups, weights_K=w)
  np.testing.assert_allclose(run("mrn", inputs, 9), ref, **TOL)


# --- BNPO (changyi7231/BNPO recipe/bnpo/src/bnpo_ray_trainer.py) -------------


def bnpo_reference(scores, index, min_value=0.0, max_value=1.0):
  scores = (scores - min_value) / (max_value - min_value)
  id2score = defaultdict(list)
  for i, s in enumerate(scores):
    id2score[index[i]].append(s)
  id2mean = {idx: (0.0 if len(v) == 1 else np.mean(v)) for idx, v in id2score.items()}
  all_p = np.array(list(id2mean.values()))
  p_mean = all_p.mean() if len(all_p) > 1 else 0.0
  p_var = all_p.var(ddof=1) if len(all_p) > 1 else 1.0
  a = (p_mean * (1 - p_mean) / p_var - 1) * p_mean
  b = (p_mean * (1 - p_mean) / p_var - 1) * (1 - p_mean)
  alpha, beta = max(1 + a / 3, 1.0), max(1 + b / 3, 1.0)
  out = np.empty_like(scores)
  for i, s in enumerate(scores):
    p = id2mean[index[i]]
    with np.errstate(divide="ignore"):  # pdf 0 at p in {0, 1} -> weight clamped to 1e6
      weight = np.clip(1 / stats.beta(alpha, beta).pdf(p), 0, 1e6)
    out[i] = weight * (s - p)
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bnpo_decomposed(seed):
  rng = np.random.default_rng(seed)
  groups = random_groups(rng, 12, 2, 8)
  n = len(groups)
  r = np.stack([rng.random(n) < rng.uniform(.2, .8), rng.random(n),
                rng.integers(0, 5, n) * 2.0 - 3], 1).astype(np.float32)
  lo, hi = [0., 0., -3.], [1., 1., 5.]
  ref = np.mean([bnpo_reference(r[:, k].astype(np.float64), groups, lo[k], hi[k])
                 for k in range(3)], axis=0)
  inputs = AdvantageInputs.create(r, groups)
  ours = run("bnpo", inputs, 12, reward_min=lo, reward_max=hi)
  np.testing.assert_allclose(ours, ref, **TOL)


def test_bnpo_single_reward_sum():
  rng = np.random.default_rng(7)
  groups = random_groups(rng, 16, 3, 6)
  n = len(groups)
  r = (rng.random((n, 2)) < .4).astype(np.float32)
  ref = bnpo_reference(r.sum(1).astype(np.float64), groups, 0.0, 2.0)
  inputs = AdvantageInputs.create(r, groups)
  ours = run("bnpo", inputs, 16, decompose=False, reward_min=0.0, reward_max=2.0)
  np.testing.assert_allclose(ours, ref, **TOL)


# --- TMN with difficulty reweighting (xiaoxuanNLP/GoLongRL core_algos.py) ----


def tmn_reference(scores, uid, mode, eps=1e-6, reweight=True, gamma=1.0, alpha=0.5):
  inv_uid = np.unique(uid, return_inverse=True)[1]
  num_uid = inv_uid.max() + 1
  inv_mode = np.unique(mode, return_inverse=True)[1]
  num_mode = inv_mode.max() + 1
  cnt = np.bincount(inv_uid, minlength=num_uid).astype(float)
  mean = np.bincount(inv_uid, weights=scores, minlength=num_uid) / np.maximum(cnt, 1)
  mean2 = np.bincount(inv_uid, weights=scores * scores, minlength=num_uid) / np.maximum(cnt, 1)
  var = np.maximum(mean2 - mean ** 2, 0) * (cnt / np.maximum(cnt - 1, 1))
  one = cnt <= 1
  mean = np.where(one, 0.0, mean)
  var = np.where(one, 1.0, var)
  uid_mode = np.full(num_uid, -1)
  uid_mode[inv_uid] = inv_mode
  mode_cnt = np.maximum(np.bincount(uid_mode, minlength=num_mode), 1)
  scale = np.sqrt(np.bincount(uid_mode, weights=var, minlength=num_mode) / mode_cnt)
  out = (scores - mean[inv_uid]) / (scale[inv_mode] + eps)
  if reweight:
    mode_mean = np.bincount(uid_mode, weights=mean, minlength=num_mode) / mode_cnt
    smooth = alpha * mean + (1 - alpha) * mode_mean[uid_mode]
    smooth = np.where(one, mode_mean[uid_mode], smooth)
    correct = (scores > smooth[inv_uid]).astype(float)
    pass_rate = np.bincount(inv_uid, weights=correct, minlength=num_uid) / np.maximum(cnt, 1)
    pos_w = np.exp(gamma * (0.5 - pass_rate))
    neg_w = np.exp(gamma * (pass_rate - 0.5))
    out = out * np.where(scores > mean[inv_uid], pos_w[inv_uid], neg_w[inv_uid])
  return out


@pytest.mark.parametrize("alpha,reweight", [(0.5, True), (0.8, True), (0.5, False)])
def test_tmn_reweight(alpha, reweight):
  rng = np.random.default_rng(int(alpha * 10) + reweight)
  groups = random_groups(rng, 14, 1, 6)          # includes single-member groups
  n = len(groups)
  task_of_group = rng.integers(0, 3, 14)
  tasks = task_of_group[groups]
  r = np.stack([rng.random(n) < .5, rng.random(n)], 1).astype(np.float32)
  w = np.array([1., .5], np.float32)
  scores = (r.astype(np.float64) * w).sum(1)
  ref = tmn_reference(scores, groups, tasks, alpha=alpha, reweight=reweight)
  inputs = AdvantageInputs.create(r, groups, weights_K=w, task_ids_N=tasks)
  ours = run("tmn_reweight", inputs, 14, num_tasks=3, alpha=alpha, reweight=reweight)
  np.testing.assert_allclose(ours, ref, **TOL)


# --- Dr. MAS agent grouping (langfengQ/DrMAS, group_by_agent_id) -------------


def test_drmas_agent_grouping():
  rng = np.random.default_rng(11)
  n_prompts, n_agents, per = 6, 3, 4
  rows = [(p, a) for p in range(n_prompts) for a in range(n_agents) for _ in range(per)]
  order = rng.permutation(len(rows))
  prompts = np.array([rows[i][0] for i in order], np.int32)
  agents = np.array([rows[i][1] for i in order], np.int32)
  r = rng.normal(size=(len(rows), 2)).astype(np.float32)
  scores = r.astype(np.float64).sum(1)
  ref = verl_grpo_outcome(scores, [f"{p}_{a}" for p, a in zip(prompts, agents)], epsilon=1e-6)
  inputs = AdvantageInputs.create(r, prompts, agent_ids_N=agents)
  fn = jax.jit(lambda i: compute_advantages("grpo", i, n_prompts, group_by_agent=True,
                                            num_agents=n_agents, eps=1e-6,
                                            diagnostics=False)[0])
  np.testing.assert_allclose(np.asarray(fn(inputs), np.float64), ref, **TOL)
  ours = run("agent_grouping", inputs, n_prompts, num_agents=n_agents,
             base_options={"eps": 1e-6})
  np.testing.assert_allclose(ours, ref, **TOL)


# --- Pref-GRPO (CodeGoat24/Pref-GRPO train_flux_pref_grpo.py) -----------------


@pytest.mark.parametrize("round_decimals", [None, 3])
def test_pref_grpo(round_decimals):
  rng = np.random.default_rng(5 if round_decimals else 6)
  g, p = 6, 5
  n = g * p
  pairwise = np.full((n, g - 1), np.nan, np.float32)
  ref = np.empty(n)
  for q in range(p):
    members = list(range(q * g, (q + 1) * g))
    win = defaultdict(float)
    compare = defaultdict(int)
    slot = defaultdict(int)
    for (i1, a), (i2, b) in itertools.combinations(enumerate(members), 2):
      outcome = rng.choice(["Image 1 is better", "Image 2 is better", "tie"])
      compare[i1] += 1
      compare[i2] += 1
      if outcome == "Image 1 is better":
        win[i1] += 1
        s1, s2 = 1.0, 0.0
      elif outcome == "Image 2 is better":
        win[i2] += 1
        s1, s2 = 0.0, 1.0
      else:
        win[i1] += .5
        win[i2] += .5
        s1 = s2 = .5
      pairwise[a, slot[a]] = s1
      pairwise[b, slot[b]] = s2
      slot[a] += 1
      slot[b] += 1
    wr = np.array([win[i] / compare[i] for i in range(g)])
    if round_decimals is not None:
      wr = np.array([round(x, round_decimals) for x in wr])
    ref[q * g:(q + 1) * g] = (wr - wr.mean()) / (wr.std(ddof=1) + 1e-8)
  inputs = AdvantageInputs.create(np.zeros((n, 1), np.float32), np.repeat(np.arange(p), g),
                                  pairwise_NM=pairwise)
  ours = run("pref_grpo", inputs, p, round_decimals=round_decimals)
  np.testing.assert_allclose(ours, ref, **TOL)
