"""Decision history at rest: the decision log as Parquet files, and reading history back for replays.

The decision log in Redis is a buffer (`RISKGATE_DECISION_LOG_MAXLEN` entries); the archive
(`riskgate decisions archive`, `service.tools.archive`) drains it into Parquet files that a
backtest (`riskgate backtest`), DuckDB or Spark read. One row per logged decision, the columns
of `SCHEMA`: the log entry's fields (`service.riskdata.records.log_entry`) with times as UTC
timestamps and lists as lists; `counters` a map of value name to value; `facts` a struct with a
typed field per fact of the catalogue (null where the event has none: another kind's facts, an
absent optional value) and `ids` a struct of identifier hashes, so columnar readers need no JSON
(DuckDB: `SELECT facts."transfer.amount_fen" FROM read_parquet('archive/*/*.parquet')`). No
column holds a clear identifier: `ids` and `subject` are keyed hashes. Zstd-compressed, a
transfer's row takes about 0.2 KB (README, "Backtests").

Layout of an archive directory (Hive-style partitions, which DuckDB's `read_parquet(...,
hive_partitioning=true)` and Spark read as a `day` column)::

    archive/
      _archive.json                          the drain's checkpoint (service.tools.archive)
      day=<YYYY-MM-DD>/part-<first>_<last>.parquet

`day` is the UTC date the decision was made (`decided_at`); `<first>_<last>` are the stream ids
of the drain's batch the file belongs to (a batch spanning midnight writes a file per day).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from service.domain import EventKind, Outcome
from service.errors import InvalidValue
from service.pipeline.facts import FIELDS, FieldType
from service.riskdata.records import LAYOUTS

_STRING = pa.string()
_TIME = pa.timestamp("us", tz="UTC")
_LIST = pa.list_(pa.string())
_TYPES = {FieldType.NUMBER: pa.int64(), FieldType.BOOL: pa.bool_(), FieldType.STRING: pa.string()}

# Every fact and identifier hash any kind of event logs, in catalogue order (`records.LAYOUTS`).
FACT_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(name for layout in LAYOUTS.values() for name in layout.facts))
ID_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(name for layout in LAYOUTS.values() for name in layout.ids))

# A decision's reasons as the clerk saw them (`records.decode_reasons`).
_REASON = pa.struct(
    [
        ("rule_id", _STRING),
        ("outcome", _STRING),
        ("message_zh", _STRING),
        ("message_en", _STRING),
        ("evidence", pa.list_(pa.list_(_STRING))),
        ("shadow", pa.bool_()),
    ]
)
# Columns added since the first archives: an archive without them reads with them empty.
_ADDED_COLUMNS = ("clerk", "reasons")

SCHEMA = pa.schema(
    [
        ("stream_id", _STRING),
        ("decision_id", _STRING),
        ("request_id", _STRING),
        ("decided_at", _TIME),
        ("occurred_at", _TIME),
        ("kind", _STRING),
        ("institution_id", _STRING),
        ("outlet_id", _STRING),
        ("region_code", _STRING),
        ("outcome", _STRING),
        ("rules", _LIST),
        ("demoted", _LIST),
        ("revision", _STRING),
        ("degraded", pa.bool_()),
        ("late", pa.bool_()),
        ("counters", pa.map_(pa.string(), pa.float64())),
        ("list_hits", _LIST),
        ("subject", _STRING),
        ("clerk", _STRING),
        ("reasons", pa.list_(_REASON)),
        ("facts", pa.struct([(name, _TYPES[FIELDS[name].type]) for name in FACT_FIELDS])),
        ("ids", pa.struct([(name, _STRING) for name in ID_FIELDS])),
    ]
)
_TIME_COLUMNS = ("decided_at", "occurred_at")
_LIST_COLUMNS = ("rules", "demoted", "list_hits")
_BOOL_COLUMNS = ("degraded", "late")
_REQUIRED = ("decision_id", "decided_at", "occurred_at", "kind", "outcome")
_KINDS = frozenset(kind.value for kind in EventKind)
_OUTCOMES = frozenset(outcome.label for outcome in Outcome)
PARTITION = "day="
SUFFIX = ".parquet"


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def day_of(document: Mapping[str, Any]) -> str:
    """The archive partition of a decision: the UTC date of `decided_at`."""
    return _time(str(document["decided_at"])).astimezone(UTC).date().isoformat()


def to_table(documents: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Log documents (`records.entry_document`) as a table of `SCHEMA`."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for document in documents:
        for name in SCHEMA.names:
            value = document.get(name)
            if name == "counters":
                value = [(k, float(v)) for k, v in sorted((value or {}).items())]
            elif name in ("facts", "ids"):
                value = dict(value or {})
            elif name in _TIME_COLUMNS:
                value = _time(str(value))
            elif name in _LIST_COLUMNS:
                value = list(value or [])
            elif name == "reasons":
                value = [{**r, "evidence": [list(pair) for pair in r["evidence"]]} for r in value or []]
            elif name in _BOOL_COLUMNS:
                value = bool(value)
            else:
                value = "" if value is None else str(value)
            columns[name].append(value)
    return pa.table(columns, schema=SCHEMA)


def documents_of(table: pa.Table) -> Iterator[dict[str, Any]]:
    """A table's rows as log documents, the shape `records.entry_document` gives (times as ISO text)."""
    missing = [name for name in _REQUIRED if name not in table.column_names]
    if missing:
        raise InvalidValue(f"not a decision history: no column {', '.join(missing)}")
    for row in table.to_pylist():
        for name in _TIME_COLUMNS:
            if isinstance(row.get(name), datetime):
                row[name] = row[name].astimezone(UTC).isoformat(timespec="microseconds")
        row["counters"] = dict(row.get("counters") or [])
        for name in ("facts", "ids"):
            row[name] = {k: v for k, v in (row.get(name) or {}).items() if v is not None}
        for name in _LIST_COLUMNS:
            row[name] = list(row.get(name) or [])
        row["clerk"] = row.get("clerk") or ""
        row["reasons"] = [
            {**r, "evidence": [(str(n), str(v)) for n, v in r["evidence"] or []]} for r in row.get("reasons") or []
        ]
        for name in _BOOL_COLUMNS:
            row[name] = bool(row.get(name))
        row["layout_known"] = True  # facts and ids are kept by name here
        yield row


def write_parquet(documents: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write documents to one Parquet file (zstd)."""
    pq.write_table(to_table(documents), path, compression="zstd")


def _files(path: Path, since: datetime | None, until: datetime | None) -> list[Path]:
    """The Parquet files of an archive directory whose day can hold decisions in [since, until]
    (decisions are made within a day of their events, so a day either side is read)."""
    first = (since - timedelta(days=1)).date().isoformat() if since else None
    last = (until + timedelta(days=1)).date().isoformat() if until else None
    out = []
    for file in sorted(path.rglob("*" + SUFFIX)):
        day = next((part[len(PARTITION) :] for part in file.parts if part.startswith(PARTITION)), None)
        if day is not None and ((first is not None and day < first) or (last is not None and day > last)):
            continue
        out.append(file)
    return out


def read_table(path: str | Path, *, since: datetime | None = None, until: datetime | None = None) -> pa.Table:
    """Every logged decision under `path` whose event time is in [since, until), as one table of
    `SCHEMA`, in the order the service made them (decided_at, then stream id).

    `path`: an archive directory, one Parquet file, or a JSON Lines export (`riskgate decisions
    export`). InvalidValue names the file (and line) of anything unreadable.
    """
    table, rows = read_rows(path, since=since, until=until)
    return table if rows is None else table.take(rows)


def read_rows(
    path: str | Path, *, since: datetime | None = None, until: datetime | None = None
) -> tuple[pa.Table, np.ndarray | None]:
    """`read_table` without moving any data: the table as read (every decision of the files) and
    the positions of `read_table`'s rows in it, in its order (None: all of them, as they are).
    Taking every column into order costs more than reading it; a columnar reader (a backtest)
    takes only what it uses."""
    root = Path(path)
    if root.is_dir():
        files = _files(root, since, until)
        if not files:
            raise InvalidValue(f"{root}: no {SUFFIX} files")
        tables = [_read_parquet(file) for file in files]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    elif root.suffix == SUFFIX:
        table = _read_parquet(root)
    elif root.is_file():
        table = to_table(_read_jsonl(root))
    else:
        raise InvalidValue(f"{root}: no such file or directory")
    occurred = table.column("occurred_at")
    keep = None
    if since is not None:
        keep = pc.greater_equal(occurred, pa.scalar(since, _TIME))
    if until is not None:
        before = pc.less(occurred, pa.scalar(until, _TIME))
        keep = before if keep is None else pc.and_(keep, before)
    ms, seq = _stream_parts(table.column("stream_id"))
    keys = pa.table({"decided_at": table.column("decided_at"), "ms": ms, "seq": seq})
    kept = None
    if keep is not None:
        kept = np.flatnonzero(pc.fill_null(keep, False).to_numpy(zero_copy_only=False))
        keys = keys.take(pa.array(kept))
    order = pc.sort_indices(keys, sort_keys=[("decided_at", "ascending"), ("ms", "ascending"), ("seq", "ascending")])
    positions = order.to_numpy().astype(np.int64)
    if kept is not None:
        return table, kept[positions]
    if (positions[1:] > positions[:-1]).all():
        return table, None
    return table, positions


def read_history(
    path: str | Path, *, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """`read_table`'s rows as log documents."""
    return list(documents_of(read_table(path, since=since, until=until)))


def _stream_parts(ids: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """A stream id's two numbers ('1700000000000-3' -> 1700000000000, 3); 0 for what is not one."""
    text = ids.combine_chunks()
    text = pc.if_else(pc.match_substring(text, "-"), text, pc.binary_join_element_wise(text, "-0", ""))
    parts = pc.split_pattern(text, "-", max_splits=1)
    first = pc.list_element(parts, 0)
    second = pc.if_else(pc.greater(pc.list_value_length(parts), 1), pc.list_element(parts, 1), "0")
    numbers = []
    for part in (first, second):
        digits = pc.match_substring_regex(part, "^[0-9]+$")
        numbers.append(pc.cast(pc.if_else(digits, part, "0"), pa.int64()))
    return numbers[0], numbers[1]


def _read_parquet(file: Path) -> pa.Table:
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as error:
        raise InvalidValue(f"{file}: not a Parquet file ({error})") from None
    missing = [name for name in _REQUIRED if name not in table.column_names]
    if missing:
        raise InvalidValue(f"{file}: not a decision history: no column {', '.join(missing)}")
    for name in _ADDED_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), SCHEMA.field(name).type))
    if not table.schema.equals(SCHEMA):
        try:
            table = table.select(SCHEMA.names).cast(SCHEMA)
        except (KeyError, pa.ArrowException) as error:
            raise InvalidValue(f"{file}: not a decision history of this riskgate ({error})") from None
    return table


def _read_jsonl(file: Path) -> list[dict[str, Any]]:
    out = []
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
                if not isinstance(document, dict):
                    raise ValueError("not a JSON object")
                for name in _REQUIRED:
                    if name not in document:
                        raise ValueError(f"no {name!r}")
                if document["kind"] not in _KINDS:
                    raise ValueError(f"unknown kind {document['kind']!r}")
                if document["outcome"] not in _OUTCOMES:
                    raise ValueError(f"unknown outcome {document['outcome']!r}")
                to_table([document])  # every field of the right type
                _time(str(document["decided_at"]))
                _time(str(document["occurred_at"]))
            except (ValueError, TypeError, pa.ArrowException) as error:
                raise InvalidValue(f"{file}:{number}: not a logged decision ({error})") from None
            out.append(document)
    return out
