"""Advantage resolution of GRPO vs GDPO (GDPO paper, Figures 2 and 3).

Counts the distinct group advantage vectors (sorted within the group, so the
order of the rollouts does not matter) over every multiset of binary reward
vectors, for GRPO, GRPO without std (Dr. GRPO) and GDPO without the batch
step (rlx's "mrn"; the batch step rescales all groups alike and does not
change the count), with eps = 0 and std with ddof 1 as in the paper:

  * 2 rewards, 2..16 rollouts (GDPO up to 11 by default, as in the paper);
  * 4 rollouts, 2..8 rewards (GDPO up to 6).

GRPO depends on a rollout's reward vector only through its total, so its
multisets are enumerated over totals (every multiset of totals is reached by
some multiset of reward vectors). The advantages are computed by rlx's
registered estimators in float64. Also prints, as checks: the paper's worked
examples; Figure 2's two-rollout example with and without GDPO's batch
normalization (rlx's "gdpo", TRL port, eps = 0); and the constant-sum case
(every rollout's rewards add to the same total), where GDPO equals GRPO.
Writes experiments/results/advantage_resolution.{md,png}.

    python experiments/gdpo_advantage_resolution.py [--gdpo_max_rollouts=11]
        [--gdpo_max_rewards=6] [--out=experiments/results]
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # exact-enough counting; this script only.

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlx.advantages import AdvantageInputs, compute_advantages  # noqa: E402

DECIMALS = 9


def advantages(name: str, rewards_NK: np.ndarray, group_size: int) -> np.ndarray:
  """[num_groups, group_size] advantages of contiguous groups, eps = 0."""
  n = rewards_NK.shape[0]
  num_groups = n // group_size
  inputs = AdvantageInputs.create(jnp.asarray(rewards_NK, jnp.float64),
                                  np.repeat(np.arange(num_groups), group_size))
  opts = {} if name == "dr_grpo" else {"eps": 0.0}
  fn = jax.jit(lambda i: compute_advantages(name, i, num_groups, diagnostics=False, **opts)[0])
  return np.asarray(fn(inputs)).reshape(num_groups, group_size)


def run(name: str, rewards_NK: np.ndarray, group_size: int, weights=None, **opts) -> np.ndarray:
  """[N] advantages of contiguous groups with the estimator's options."""
  n = rewards_NK.shape[0]
  inputs = AdvantageInputs.create(jnp.asarray(rewards_NK, jnp.float64),
                                  np.repeat(np.arange(n // group_size), group_size),
                                  weights_K=weights)
  return np.asarray(compute_advantages(name, inputs, n // group_size, diagnostics=False,
                                       **opts)[0])


def count_distinct(adv_GS: np.ndarray) -> int:
  """Number of distinct sorted group advantage vectors."""
  rows = np.round(np.sort(adv_GS, axis=1), DECIMALS) + 0.0   # + 0.0 folds -0.0 into 0.0
  return len(np.unique(rows, axis=0))


def multisets(num_items: int, size: int) -> np.ndarray:
  """All multisets of `size` items out of range(num_items): [count, size] ids."""
  count = math.comb(num_items + size - 1, size)
  flat = np.fromiter(itertools.chain.from_iterable(
      itertools.combinations_with_replacement(range(num_items), size)), np.int32,
      count=count * size)
  return flat.reshape(count, size)


def grpo_counts(num_rewards: int, rollouts: int) -> tuple[int, int]:
  totals = multisets(num_rewards + 1, rollouts).astype(np.float64).reshape(-1, 1)
  return (count_distinct(advantages("grpo", totals, rollouts)),
          count_distinct(advantages("dr_grpo", totals, rollouts)))


def gdpo_count(num_rewards: int, rollouts: int) -> int:
  vectors = ((np.arange(2 ** num_rewards)[:, None] >> np.arange(num_rewards)) & 1)
  ids = multisets(2 ** num_rewards, rollouts)
  rewards = vectors[ids.reshape(-1)].astype(np.float64)
  return count_distinct(advantages("mrn", rewards, rollouts))


def worked_examples() -> list[str]:
  """The paper's Figure 2 (two rewards, two rollouts) and a three-rollout case."""
  lines = []

  def show(title, rewards, rollouts):
    r = np.asarray(rewards, np.float64)
    grpo = advantages("grpo", r.sum(1, keepdims=True), rollouts)[0]
    gdpo = advantages("mrn", r, rollouts)[0]
    lines.append(f"{title}: rewards {r.astype(int).tolist()} totals {r.sum(1).astype(int).tolist()}"
                 f" -> GRPO {np.round(grpo, 4).tolist()}  GDPO {np.round(gdpo, 4).tolist()}")
    return grpo, gdpo

  s = 1 / math.sqrt(2)
  g1, d1 = show("2 rollouts, totals (0,1)", [[0, 0], [0, 1]], 2)
  g2, d2 = show("2 rollouts, totals (0,2)", [[0, 0], [1, 1]], 2)
  g3, d3 = show("2 rollouts, totals (1,2)", [[1, 0], [1, 1]], 2)
  assert np.allclose(g1, [-s, s]) and np.allclose(g2, [-s, s]) and np.allclose(g3, [-s, s])
  assert np.allclose(d1, [-s, s]) and np.allclose(d2, [-2 * s, 2 * s])
  lines.append("check: GRPO collapses totals (0,1), (0,2), (1,2) to (-0.7071, 0.7071); "
               "GDPO gives (-0.7071, 0.7071) for (0,1) and (-1.4142, 1.4142) for (0,2): OK")
  t = 1 / math.sqrt(3)
  g4, d4 = show("3 rollouts, totals (0,0,1)", [[0, 0], [0, 0], [0, 1]], 3)
  g5, d5 = show("3 rollouts, totals (0,0,2)", [[0, 0], [0, 0], [1, 1]], 3)
  assert np.allclose(g4, [-t, -t, 2 * t]) and np.allclose(g5, g4)
  assert np.allclose(d4, g4) and np.allclose(d5, 2 * np.asarray(d4))
  lines.append("check: GRPO gives (-0.5774, -0.5774, 1.1547) for both; GDPO doubles it "
               "for (0,0,2): OK")
  g6, d6 = show("3 rollouts, totals (0,1,1) via one reward each", [[0, 0], [1, 0], [0, 1]], 3)
  g7, d7 = show("3 rollouts, totals (0,1,1) via reward 1 twice", [[0, 0], [1, 0], [1, 0]], 3)
  assert np.allclose(np.sort(d6), np.sort(d7)) and np.allclose(g6, g7)
  lines.append("check: GDPO does not separate every pair: (0,1,1) built from different "
               "rewards gives the same sorted vector as GRPO's: OK")
  return lines


def batch_norm_examples() -> list[str]:
  """Figure 2's groups with and without GDPO's batch normalization (TRL port, eps 0)."""
  lines = []
  figure2 = {"(0,1)": [[0, 0], [0, 1]], "(0,2)": [[0, 0], [1, 1]], "(1,2)": [[1, 0], [1, 1]]}
  gdpo = dict(eps=0.0, batch_eps=0.0)
  s = 1 / math.sqrt(2)
  for totals, r in figure2.items():
    r = np.asarray(r, np.float64)
    without = run("mrn", r, 2, eps=0.0)
    alone = run("gdpo", r, 2, **gdpo)
    lines.append(f"Figure 2, totals {totals} alone in the batch: GDPO without the batch step "
                 f"{np.round(without, 4).tolist()}, with it {np.round(alone, 4).tolist()}")
    assert np.allclose(alone, [-s, s])   # one group: the batch step undoes the separation
  both = np.asarray(sum(figure2.values(), []), np.float64)
  without = run("mrn", both, 2, eps=0.0)
  batch = run("gdpo", both, 2, **gdpo)
  grpo = run("grpo", both.sum(1, keepdims=True), 2, eps=0.0)
  lines.append(f"Figure 2, the three groups in one batch: GRPO {np.round(grpo, 4).tolist()}; "
               f"GDPO without the batch step {np.round(without, 4).tolist()}, with it "
               f"{np.round(batch, 4).tolist()}")
  ratio = batch / without
  assert np.allclose(ratio, ratio[0]) and ratio[0] > 0
  assert np.allclose(np.abs(batch[2:4]), 2 * np.abs(batch[:2]))
  lines.append(f"check: the batch step divides every group by the same number "
               f"({1 / ratio[0]:.4f}), so (0,2) keeps twice the advantage of (0,1) and (1,2); "
               "a group alone in its batch is brought back to GRPO's (-0.7071, 0.7071): "
               "decoupling helps through the scale between groups of one batch: OK")
  return lines


def constant_sum_examples(seed: int = 0) -> list[str]:
  """Rewards that add to the same total in every rollout: GDPO equals GRPO."""
  rng = np.random.default_rng(seed)
  r1 = rng.integers(0, 5, 32) / 4.0
  r = np.stack([r1, 1.0 - r1], 1)                  # r1 + r2 = 1 for every rollout
  lines = []
  for w in ([1.0, 1.0], [1.0, 0.5], [0.5, 1.0]):
    w = np.asarray(w)
    grpo = run("grpo", r, 4, weights=w, eps=0.0)
    mrn = run("mrn", r, 4, weights=w, eps=0.0)
    gdpo = run("gdpo", r, 4, weights=w, eps=0.0, batch_eps=0.0)
    # GRPO's sum is (w1 - w2) r1 + w2: a group z-score of r1 up to the sign of w1 - w2.
    assert np.allclose(mrn, abs(w[0] - w[1]) * grpo)
    std = grpo.std(ddof=1)
    grpo_bn = (grpo - grpo.mean()) / std if std > 0 else np.zeros_like(grpo)
    assert np.allclose(gdpo, grpo_bn)
    lines.append(f"constant sum r1 + r2 = 1, weights {w.tolist()}: GDPO without the batch step "
                 f"= {abs(w[0] - w[1]):g} x GRPO; with it = GRPO batch-normalized "
                 f"(max |A| {np.abs(gdpo).max():.4f}): OK")
  lines.append("check: with equal weights both are 0 (r2 = 1 - r1 cancels r1 in the sum and "
               "z(r2) = -z(r1)); with unequal weights both follow z(r1): decoupling gives no "
               "resolution when one reward determines the others")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gdpo_max_rollouts", type=int, default=11)
  parser.add_argument("--gdpo_max_rewards", type=int, default=6)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "results"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  start = time.time()

  print("Worked examples (GDPO paper Figure 2 and a three-rollout case):", flush=True)
  examples = worked_examples()
  batch_lines = batch_norm_examples()
  constant_lines = constant_sum_examples()
  for line in examples + batch_lines + constant_lines:
    print("  " + line, flush=True)

  rollout_rows = []
  for g in range(2, 17):
    grpo, grpo_nostd = grpo_counts(2, g)
    gdpo = gdpo_count(2, g) if g <= args.gdpo_max_rollouts else None
    rollout_rows.append((g, grpo, grpo_nostd, gdpo))
    print(f"[{time.time() - start:6.1f}s] 2 rewards, {g:2d} rollouts: GRPO {grpo}, "
          f"GRPO w/o std {grpo_nostd}, GDPO {gdpo if gdpo is not None else '-'}", flush=True)
  reward_rows = []
  for k in range(2, 9):
    grpo, grpo_nostd = grpo_counts(k, 4)
    gdpo = gdpo_count(k, 4) if k <= args.gdpo_max_rewards else None
    reward_rows.append((k, grpo, grpo_nostd, gdpo))
    print(f"[{time.time() - start:6.1f}s] 4 rollouts, {k} rewards: GRPO {grpo}, "
          f"GRPO w/o std {grpo_nostd}, GDPO {gdpo if gdpo is not None else '-'} "
          f"({math.comb(2 ** k + 3, 4) if k <= args.gdpo_max_rewards else 0} multisets)",
          flush=True)

  def table(title, head, rows):
    out = [f"### {title}", "", f"| {head} | GRPO | GRPO w/o std | GDPO |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d if d is not None else '-'} |" for a, b, c, d in rows]
    return out + [""]

  md = ["# Advantage resolution: GRPO vs GDPO", "",
        "Distinct group advantage vectors (sorted within the group) over every multiset of "
        "binary reward vectors; eps = 0, std with ddof 1, GDPO without its batch step "
        "(rlx estimators grpo, dr_grpo, mrn in float64). Reproduces the setting of the GDPO "
        "paper's Figure 3. Generated by experiments/gdpo_advantage_resolution.py.", ""]
  md += table("Two binary rewards", "rollouts", rollout_rows)
  md += table("Four rollouts", "rewards", reward_rows)
  md += ["### Worked examples", ""] + [f"- {line}" for line in examples] + [""]
  md += ["### Figure 2 with and without GDPO's batch normalization", "",
         "rlx's `gdpo` (TRL port, eps = 0, batch eps 0) against `mrn` (the same without the "
         "batch step).", ""] + [f"- {line}" for line in batch_lines] + [""]
  md += ["### Constant-sum rewards: GDPO equals GRPO", "",
         "32 rollouts in groups of 4, r1 in {0, 1/4, ..., 1}, r2 = 1 - r1.", ""]
  md += [f"- {line}" for line in constant_lines] + [""]
  md_path = os.path.join(args.out, "advantage_resolution.md")
  with open(md_path, "w") as f:
    f.write("\n".join(md))

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, rows, xlabel, title in [(axes[0], rollout_rows, "number of rollouts", "2 binary rewards"),
                                  (axes[1], reward_rows, "number of rewards", "4 rollouts")]:
    x = [r[0] for r in rows]
    ax.plot(x, [r[1] for r in rows], "o-", label="GRPO")
    ax.plot(x, [r[2] for r in rows], "s--", label="GRPO w/o std")
    xg = [r[0] for r in rows if r[3] is not None]
    ax.plot(xg, [r[3] for r in rows if r[3] is not None], "^-", label="GDPO")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("distinct advantage groups")
    ax.set_title(title)
    ax.grid(alpha=.3)
    ax.legend()
  fig.tight_layout()
  png_path = os.path.join(args.out, "advantage_resolution.png")
  fig.savefig(png_path, dpi=120)
  print("\n".join(md))
  print(f"wrote {md_path} and {png_path} in {time.time() - start:.1f}s")


if __name__ == "__main__":
  main()
