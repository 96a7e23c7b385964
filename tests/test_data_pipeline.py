"""Grain prompt pipeline: exact resume, per-host shards, epochs."""
import collections
import json

import numpy as np
import pytest

from rlx.data import make_prompt_iterator
from rlx.data.pipeline import collate

ROWS = [{"prompt": f"p{i}", "id": i, "score": i / 2} for i in range(23)]


def _ids(it, k):
  return [next(it)["id"].tolist() for _ in range(k)]


def _make(**kw):
  args = dict(batch_prompts=4, seed=0, process_index=0, process_count=1)
  args.update(kw)
  return make_prompt_iterator(ROWS, **args)


def test_batches_are_columns():
  b = next(_make())
  assert sorted(b) == ["id", "prompt", "score"]
  assert isinstance(b["prompt"], list) and len(b["prompt"]) == 4
  assert b["id"].dtype == np.int64 and b["score"].dtype == np.float64
  assert b["prompt"] == [f"p{i}" for i in b["id"]]
  c = collate([{"a": 1, "b": [1, 2]}, {"a": True, "b": None}])
  assert c["a"].tolist() == [1, 1] and c["b"] == [[1, 2], None]


def test_deterministic_shuffle_and_epochs():
  ids = sum(_ids(_make(), 23), [])  # 4 epochs of 23 rows
  assert ids == sum(_ids(_make(), 23), [])
  assert ids != sum(_ids(_make(seed=1), 23), [])
  epochs = [ids[i * 23:(i + 1) * 23] for i in range(4)]
  for e in epochs:
    assert sorted(e) == list(range(23))  # each epoch is a permutation
  assert epochs[0] != epochs[1] and epochs[0] != list(range(23))  # reshuffled
  assert sum(_ids(_make(shuffle=False), 3), []) == list(range(12))


@pytest.mark.parametrize("cut", [0, 3, 6])
def test_resume_exact(cut):
  ref = _ids(_make(), 12)
  it = _make()
  _ids(it, cut)
  state = json.loads(json.dumps(it.get_state()))  # checkpointed as JSON
  it2 = _make()
  _ids(it2, 2)  # a fresh run at some other position
  it2.set_state(state)
  assert _ids(it2, 12 - cut) == ref[cut:]


def test_resume_rejects_other_pipeline():
  state = _make().get_state()
  with pytest.raises(ValueError, match="seed=0 vs 1"):
    _make(seed=1).set_state(state)
  with pytest.raises(ValueError, match="batch_prompts=4 vs 8"):
    _make(batch_prompts=8).set_state(state)


def test_host_shards_partition_global_batches():
  global_batches = _ids(_make(batch_prompts=6), 10)
  hosts = [_make(batch_prompts=6, process_index=p, process_count=3) for p in range(3)]
  for k in range(10):
    local = [next(h)["id"].tolist() for h in hosts]
    assert all(len(l) == 2 for l in local)
    # Same multiset as the 1-host global batch; hosts hold disjoint positions.
    assert collections.Counter(sum(local, [])) == collections.Counter(global_batches[k])
  # Resume a 1-host state on 2 hosts: the union is the next global batch.
  it = _make(batch_prompts=6)
  _ids(it, 4)
  state = it.get_state()
  two = [_make(batch_prompts=6, process_index=p, process_count=2) for p in range(2)]
  for h in two:
    h.set_state(state)
  assert sorted(sum((next(h)["id"].tolist() for h in two), [])) == sorted(global_batches[4])


def test_finite_epochs_cover_data_once_per_epoch():
  seen = []
  sizes = []
  for p in range(3):
    for b in _make(batch_prompts=6, process_index=p, process_count=3, num_epochs=1,
                   drop_remainder=False):
      seen += b["id"].tolist()
      sizes.append(len(b["id"]))
  assert sorted(seen) == list(range(23))  # disjoint and covering
  # Dropping the remainder: every host runs the same number of full steps.
  counts = [sum(1 for _ in _make(batch_prompts=6, process_index=p, process_count=3,
                                 num_epochs=2)) for p in range(3)]
  assert counts == [46 // 6] * 3


def test_argument_errors():
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    _make(batch_prompts=4, process_count=3)
  with pytest.raises(ValueError, match="empty dataset"):
    make_prompt_iterator([], batch_prompts=2, seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="no full batch"):
    _make(batch_prompts=64, num_epochs=1)
