"""Local datasets: JSONL, JSON, Parquet, `datasets.save_to_disk` Arrow folders."""
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlx.data import load_rows, read_rows

FIELDS = {"prompt": "question", "answer": "solution"}


def _write_save_to_disk(folder, tables):
  """Mimics datasets.Dataset.save_to_disk: Arrow IPC stream shards + json files."""
  folder.mkdir(parents=True)
  names = [f"data-{i:05d}-of-{len(tables):05d}.arrow" for i in range(len(tables))]
  for name, table in zip(names, tables):
    with pa.OSFile(str(folder / name), "wb") as sink:
      with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
  (folder / "state.json").write_text(json.dumps(
      {"_data_files": [{"filename": n} for n in names], "_fingerprint": "x",
       "_format_type": None, "_split": None}))
  (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_jsonl_mapping_and_malformed_rows(tmp_path, caplog):
  path = tmp_path / "train.jsonl"
  lines = [
      json.dumps({"question": "1+1?", "solution": 2, "meta": {"level": 1}}),
      '{"question": "broken", ',
      json.dumps({"question": "no solution"}),
      "",
      json.dumps({"question": 7, "solution": 3}),
      json.dumps(["not", "an", "object"]),
      json.dumps({"question": "2+2?", "solution": 4, "meta": {"level": 2}}),
      json.dumps({"question": "null", "solution": None}),
  ]
  path.write_text("\n".join(lines) + "\n")
  with caplog.at_level(logging.WARNING):
    rows = load_rows(path, fields=FIELDS)
  assert rows == [{"prompt": "1+1?", "answer": 2}, {"prompt": "2+2?", "answer": 4}]
  _, report = read_rows(path, fields=FIELDS)
  assert (report.num_read, report.num_kept, report.num_skipped) == (7, 2, 5)
  assert [w for _, w, _ in report.skipped] == ["line 2", "line 3", "line 5", "line 6", "line 8"]
  reasons = [r for _, _, r in report.skipped]
  assert "invalid JSON" in reasons[0] and "missing field 'solution'" in reasons[1]
  assert "'prompt' is a int, expected str or list" in reasons[2]
  assert f"{path} line 2: invalid JSON" in caplog.text
  assert "Skipped 5 of 7 rows" in caplog.text
  # Nested fields, unmapped fields kept on request, no mapping at all.
  rows = load_rows(path, fields={"prompt": "question", "level": "meta.level"})
  assert rows == [{"prompt": "1+1?", "level": 1}, {"prompt": "2+2?", "level": 2}]
  rows = load_rows(path, fields={"prompt": "question", "answer": "solution"},
                   keep_unmapped=True, limit=1)
  assert rows == [{"prompt": "1+1?", "answer": 2, "meta": {"level": 1}}]
  assert len(load_rows(path, fields={"prompt": "question"}, types={})) == 5  # int prompt ok


def test_json_list_and_parquet(tmp_path):
  recs = [{"q": "a", "s": "x"}, {"q": "b", "s": None}, {"q": "c", "s": "z"}]
  (tmp_path / "d.json").write_text(json.dumps(recs))
  rows, report = read_rows(tmp_path / "d.json", fields={"prompt": "q", "answer": "s"})
  assert rows == [{"prompt": "a", "answer": "x"}, {"prompt": "c", "answer": "z"}]
  assert report.skipped[0][1:] == ("item 1", "missing field 's' (for 'answer')")
  pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet")
  rows, report = read_rows(tmp_path / "d.parquet", fields={"prompt": "q", "answer": "s"})
  assert rows == [{"prompt": "a", "answer": "x"}, {"prompt": "c", "answer": "z"}]
  assert [w for _, w, _ in report.skipped] == ["row 1"]
  with pytest.raises(KeyError, match=r"\['solution'\].*columns are \['q', 's'\]"):
    load_rows(tmp_path / "d.parquet", fields={"prompt": "q", "answer": "solution"})


def test_save_to_disk_arrow_stream_folder(tmp_path):
  t1 = pa.Table.from_pylist([{"question": f"q{i}", "solution": i} for i in range(3)])
  t2 = pa.Table.from_pylist([{"question": "q3", "solution": 3},
                             {"question": None, "solution": 4}])
  _write_save_to_disk(tmp_path / "ds", [t1, t2])
  rows, report = read_rows(tmp_path / "ds", fields=FIELDS)
  assert rows == [{"prompt": f"q{i}", "answer": i} for i in range(4)]
  assert report.skipped == [(str(tmp_path / "ds" / "data-00001-of-00002.arrow"), "row 1",
                             "missing field 'question' (for 'prompt')")]
  # A DatasetDict folder needs a split.
  root = tmp_path / "dd"
  _write_save_to_disk(root / "train", [t1])
  _write_save_to_disk(root / "test", [t2])
  (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
  assert load_rows(root, fields=FIELDS, split="test") == [{"prompt": "q3", "answer": 3}]
  with pytest.raises(ValueError, match=r"pass split=one of \['train', 'test'\]"):
    load_rows(root, fields=FIELDS)
  with pytest.raises(ValueError, match="Unknown split 'dev'"):
    load_rows(root, fields=FIELDS, split="dev")
  # A single Arrow IPC *file* (not stream) is read too.
  with pa.OSFile(str(tmp_path / "one.arrow"), "wb") as sink:
    with pa.ipc.new_file(sink, t1.schema) as w:
      w.write_table(t1)
  assert len(load_rows(tmp_path / "one.arrow", fields=FIELDS)) == 3


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_rows(tmp_path / "nope.jsonl")
  (tmp_path / "d.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match=r"Unknown dataset format .*\.jsonl"):
    load_rows(tmp_path / "d.csv")
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(ValueError, match="Unknown dataset folder"):
    load_rows(tmp_path / "empty_dir")
  with pytest.raises(ValueError, match="valid choices: jsonl, json, parquet, arrow"):
    load_rows(tmp_path / "d.csv", format="csv")
  (tmp_path / "bad.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
  with pytest.raises(ValueError, match="No usable rows .* line 1: missing field 'q'"):
    load_rows(tmp_path / "bad.jsonl", fields={"prompt": "q"})
