"""Prompt datasets from local files: JSONL, JSON, Parquet, `datasets.save_to_disk`.

    rows = load_rows("data/train.jsonl", fields={"prompt": "question",
                                                 "answer": "solution"})

`fields` maps output column -> source field (dotted paths reach into nested
objects: "meta.solution"). Rows that cannot be used (a line that is not JSON,
a missing or null mapped field, a field of the wrong type) are skipped and
counted; each skip is logged with the file and line (JSONL) or row (tables).
A missing path or an unknown format raises an error.

Formats, by path:
  *.jsonl / *.ndjson           one JSON object per line
  *.json                       a JSON list of objects, or JSON lines
  *.parquet                    Parquet table
  folder with state.json or dataset_info.json and data-*.arrow
                               `datasets.Dataset.save_to_disk` (Arrow IPC stream
                               files, read with pyarrow; no `datasets` needed)
  folder with dataset_dict.json  `DatasetDict.save_to_disk`: pass `split`
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "json", "parquet", "arrow")
DEFAULT_TYPES: dict[str, type | tuple[type, ...]] = {
    "prompt": (str, list), "completion": (str, list), "demo": str}
_MISSING = object()


@dataclasses.dataclass
class SkipReport:
  """What `read_rows` kept and skipped: `skipped` lists (file, where, reason)."""
  num_read: int = 0
  num_kept: int = 0
  skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)


def detect_format(path: str) -> str:
  """One of FORMATS for `path`; raises FileNotFoundError / ValueError."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Dataset path {path!r} does not exist.")
  if os.path.isdir(path):
    names = set(os.listdir(path))
    if "dataset_dict.json" in names:
      raise ValueError(
          f"{path!r} is a DatasetDict folder; pass split=one of "
          f"{_dict_splits(path)} (or point at the split's folder).")
    if names & {"state.json", "dataset_info.json"} or any(
        n.endswith(".arrow") for n in names):
      return "arrow"
    raise ValueError(
        f"Unknown dataset folder {path!r}: expected a `datasets.save_to_disk` "
        f"folder (state.json + data-*.arrow). Supported formats: {', '.join(FORMATS)}.")
  ext = path.lower().rsplit(".", 1)[-1] if "." in os.path.basename(path) else ""
  by_ext = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "json", "parquet": "parquet",
            "pq": "parquet", "arrow": "arrow"}
  if ext not in by_ext:
    raise ValueError(
        f"Unknown dataset format for {path!r} (extension {ext!r}); supported: "
        f".jsonl/.ndjson, .json, .parquet, .arrow, or a `datasets.save_to_disk` folder.")
  return by_ext[ext]


def _dict_splits(path: str) -> list[str]:
  with open(os.path.join(path, "dataset_dict.json")) as f:
    return list(json.load(f).get("splits", []))


def _iter_jsonl(path: str) -> Iterator[tuple[str, Any]]:
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield f"line {lineno}", json.loads(line)
      except ValueError as e:
        yield f"line {lineno}", _BadRecord(f"invalid JSON ({e.msg})")


def _iter_json(path: str) -> Iterator[tuple[str, Any]]:
  with open(path, encoding="utf-8") as f:
    head = f.read(1 << 12).lstrip()
  if not head.startswith("["):
    yield from _iter_jsonl(path)
    return
  with open(path, encoding="utf-8") as f:
    try:
      records = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path!r} is not valid JSON: {e}") from None
  for i, rec in enumerate(records):
    yield f"item {i}", rec


def _iter_table(table: Any) -> Iterator[tuple[str, Any]]:
  for i, rec in enumerate(table.to_pylist()):
    yield f"row {i}", rec


def _read_arrow_file(path: str) -> Any:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  with pa.memory_map(path, "r") as source:
    try:
      return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
      pass
  with pa.memory_map(path, "r") as source:
    return pa.ipc.open_file(source).read_all()


def arrow_files(folder: str) -> list[str]:
  """Data files of a `save_to_disk` folder, in state.json order."""
  state = os.path.join(folder, "state.json")
  if os.path.exists(state):
    with open(state) as f:
      files = [d["filename"] for d in json.load(f).get("_data_files", [])]
    if files:
      return [os.path.join(folder, n) for n in files]
  files = sorted(glob.glob(os.path.join(folder, "*.arrow")))
  files = [p for p in files if not os.path.basename(p).startswith("cache-")]
  if not files:
    raise ValueError(f"No data-*.arrow files in dataset folder {folder!r}.")
  return files


def _records(path: str, fmt: str) -> Iterator[tuple[str, str, Any, Sequence[str] | None]]:
  """Yields (file, where, record, column names of the file or None)."""
  if fmt == "jsonl":
    for where, rec in _iter_jsonl(path):
      yield path, where, rec, None
  elif fmt == "json":
    for where, rec in _iter_json(path):
      yield path, where, rec, None
  elif fmt == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    table = pq.read_table(path)
    for where, rec in _iter_table(table):
      yield path, where, rec, table.column_names
  elif fmt == "arrow":
    files = arrow_files(path) if os.path.isdir(path) else [path]
    for file in files:
      table = _read_arrow_file(file)
      for where, rec in _iter_table(table):
        yield file, where, rec, table.column_names
  else:
    raise ValueError(f"Unknown dataset format {fmt!r}; valid choices: {', '.join(FORMATS)}.")


class _BadRecord:

  def __init__(self, reason: str):
    self.reason = reason


def _get(rec: Any, dotted: str) -> Any:
  cur = rec
  for part in dotted.split("."):
    if not isinstance(cur, Mapping) or part not in cur:
      return _MISSING
    cur = cur[part]
  return cur


def read_rows(path: str | os.PathLike[str], *, fields: Mapping[str, str] | None = None,
              format: str | None = None, split: str | None = None,  # pylint: disable=redefined-builtin
              types: Mapping[str, type | tuple[type, ...]] | None = None,
              required: Sequence[str] = ("prompt",), keep_unmapped: bool = False,
              limit: int | None = None) -> tuple[list[dict[str, Any]], SkipReport]:
  """Reads rows and reports what was skipped (see `load_rows`)."""
  path = os.fspath(path)
  if split is not None and os.path.isdir(path) and os.path.exists(
      os.path.join(path, "dataset_dict.json")):
    splits = _dict_splits(path)
    if split not in splits:
      raise ValueError(f"Unknown split {split!r} in {path!r}; valid choices: {splits}.")
    path = os.path.join(path, split)
  if format is None:
    format = detect_format(path)
  elif not os.path.exists(path):
    raise FileNotFoundError(f"Dataset path {path!r} does not exist.")
  if format not in FORMATS:
    raise ValueError(f"Unknown dataset format {format!r}; valid choices: {', '.join(FORMATS)}.")
  mapping = dict(fields) if fields else {}
  types = dict(DEFAULT_TYPES if types is None else types)
  report = SkipReport()
  rows: list[dict[str, Any]] = []
  checked_columns: set[str] = set()
  for file, where, rec, columns in _records(path, format):
    if columns is not None and file not in checked_columns:
      checked_columns.add(file)
      roots = {src.split(".")[0] for src in mapping.values()}
      absent = sorted(roots - set(columns))
      if absent:
        raise KeyError(f"Field(s) {absent} mapped in `fields` are not columns of "
                       f"{file!r}; its columns are {list(columns)}.")
    report.num_read += 1
    reason, row = _convert(rec, mapping, types, required, keep_unmapped)
    if reason is not None:
      report.skipped.append((file, where, reason))
      continue
    rows.append(row)
    if limit is not None and len(rows) >= limit:
      break
  report.num_kept = len(rows)
  return rows, report


def _convert(rec: Any, mapping: dict[str, str], types: dict[str, Any],
             required: Sequence[str], keep_unmapped: bool) -> tuple[str | None, dict[str, Any]]:
  if isinstance(rec, _BadRecord):
    return rec.reason, {}
  if not isinstance(rec, Mapping):
    return f"record is a {type(rec).__name__}, not an object", {}
  if mapping:
    row = {k: v for k, v in rec.items() if k not in mapping.values()} if keep_unmapped else {}
    for dst, src in mapping.items():
      value = _get(rec, src)
      if value is _MISSING or value is None:
        return f"missing field {src!r} (for {dst!r})", {}
      row[dst] = value
  else:
    row = dict(rec)
  for name in required:
    if row.get(name) is None:
      return f"missing field {name!r}", {}
  for name, expected in types.items():
    if name in row and not isinstance(row[name], expected):
      want = (expected.__name__ if isinstance(expected, type)
              else " or ".join(t.__name__ for t in expected))
      return f"field {name!r} is a {type(row[name]).__name__}, expected {want}", {}
  return None, row


def load_rows(path: str | os.PathLike[str], *, fields: Mapping[str, str] | None = None,
              format: str | None = None, split: str | None = None,  # pylint: disable=redefined-builtin
              types: Mapping[str, type | tuple[type, ...]] | None = None,
              required: Sequence[str] = ("prompt",), keep_unmapped: bool = False,
              limit: int | None = None, max_logged: int = 10) -> list[dict[str, Any]]:
  """Loads a prompt dataset as a list of dicts, skipping malformed rows.

  Args:
    path: a .jsonl/.json/.parquet/.arrow file or a `save_to_disk` folder.
    fields: output column -> source field (dotted for nested); None keeps all
      fields as they are.
    format: one of FORMATS; None infers it from the path.
    split: split name for a `DatasetDict.save_to_disk` folder.
    types: output column -> accepted type(s); default: 'prompt' and
      'completion' str (or a list of chat messages), 'demo' str.
    required: output columns that every kept row must have (not null).
    keep_unmapped: with `fields`, also keep the fields not mapped.
    limit: stop after this many kept rows.
    max_logged: skipped rows logged one by one (then only the total).

  Returns:
    The kept rows. Raises ValueError if rows were read but none was usable.
  """
  rows, report = read_rows(path, fields=fields, format=format, split=split, types=types,
                           required=required, keep_unmapped=keep_unmapped, limit=limit)
  for file, where, reason in report.skipped[:max_logged]:
    logger.warning("Skipping %s %s: %s", file, where, reason)
  if report.num_skipped:
    logger.warning("Skipped %d of %d rows of %s (malformed).", report.num_skipped,
                   report.num_read, os.fspath(path))
  if report.num_read and not rows:
    first = "; ".join(f"{w}: {r}" for _, w, r in report.skipped[:3])
    raise ValueError(f"No usable rows in {os.fspath(path)!r} ({report.num_read} read, "
                     f"all skipped; e.g. {first}). Check `fields`.")
  return rows
