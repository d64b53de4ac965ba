"""Validation of table partitions against their contracts.

Every bad-input case of SPEC section 3 is reported with the table, the partition, the
column and a sample of bad rows. Checks are vectorised with PyArrow and read one column
at a time, so a large partition is checked without loading it whole.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import TableSpec, table_spec

SAMPLE_ROWS = 5


class BadInputError(ValueError):
    """Raised when a partition violates its contract; the message says exactly where."""


@dataclass
class Problem:
    table: str
    partition: str
    column: str | None
    message: str
    sample: list[dict] = field(default_factory=list)
    file: str | None = None

    def __str__(self) -> str:
        where = f"table {self.table!r}, partition {self.partition}"
        if self.file and not self.column:
            where += f", file {self.file!r}"
        if self.column:
            where += f", column {self.column!r}"
        text = f"{where}: {self.message}"
        if self.file and self.column:
            text += f" in file {self.file!r}"
        if self.sample:
            text += "\n    sample rows: " + "; ".join(json.dumps(r, default=str) for r in self.sample)
        return text


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def extend(self, other: "Report") -> "Report":
        self.problems.extend(other.problems)
        return self

    def __str__(self) -> str:
        if self.ok:
            return "ok"
        return f"{len(self.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise BadInputError(str(self))


class _Source:
    """Columns of one partition: in memory or read lazily from Parquet files."""

    def __init__(self, schema: pa.Schema, num_rows: int, loader: Callable[[list[str]], pa.Table]):
        self.schema = schema
        self.num_rows = num_rows
        self._loader = loader

    def columns(self, names: list[str]) -> pa.Table:
        return self._loader(names)

    @classmethod
    def from_table(cls, t: pa.Table) -> "_Source":
        return cls(t.schema, t.num_rows, lambda names: t.select(names))

    @classmethod
    def from_files(cls, fs, paths: list[str]) -> "_Source":
        """Columns of already-checked files (see :func:`_check_files`): same schema per file."""
        import pyarrow.parquet as pq

        if not paths:
            return cls(pa.schema([]), 0, lambda names: pa.table({}))
        schema = pq.read_schema(paths[0], filesystem=fs)
        rows = sum(pq.ParquetFile(p, filesystem=fs).metadata.num_rows for p in paths)

        def load(names: list[str]) -> pa.Table:
            parts = [pq.read_table(p, columns=names, filesystem=fs) for p in paths]
            return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]

        return cls(schema, rows, load)


def _check_files(spec: TableSpec, part: str, fs, paths: list[str]) -> Report:
    """Every data file on its own: readable Parquet footer, and its schema typed as the contract.

    Each file is checked against the contract (not against the first file), so a second
    file with ``is_like`` as int32 is an error instead of being narrowed to int8 by the
    reader (300 would come back as 44). A zero-byte, truncated or non-Parquet file is named.
    """
    import pyarrow.parquet as pq

    rep = Report()
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        try:
            schema = pq.read_schema(path, filesystem=fs)
            pq.ParquetFile(path, filesystem=fs).metadata  # noqa: B018 - the footer must parse
        except Exception as e:  # noqa: BLE001 - any failure to parse the file is bad input, named
            size = _size(fs, path)
            why = "zero-byte file" if size == 0 else f"not a readable Parquet file ({type(e).__name__}: {_first_line(e)})"
            rep.problems.append(Problem(spec.name, part, None, f"{why}; size {size} bytes", file=name))
            continue
        present = {f.name: f.type for f in schema}
        for col in spec.columns:
            if col.name not in present:
                rep.problems.append(Problem(spec.name, part, col.name, f"missing column (expected {col.type})", file=name))
            elif not _type_ok(col.type, present[col.name]):
                rep.problems.append(Problem(
                    spec.name, part, col.name, f"wrong type: expected {col.type}, found {present[col.name]}"
                    + (" (no narrowing cast is applied)" if _is_narrowing(col.type, present[col.name]) else ""),
                    file=name,
                ))
    return rep


def _size(fs, path: str) -> int | None:
    try:
        return fs.get_file_info(path).size
    except Exception:  # noqa: BLE001
        return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _is_narrowing(expected: pa.DataType, got: pa.DataType) -> bool:
    return (pa.types.is_integer(expected) and pa.types.is_integer(got) and got.bit_width > expected.bit_width) or (
        pa.types.is_floating(expected) and pa.types.is_floating(got) and got.bit_width > expected.bit_width
    )


def validate_arrow(
    table: str, day: dt.date | None, data: pa.Table, emb_dim: int | None = None, allow_empty: bool = False
) -> Report:
    """Check an in-memory partition of ``table`` for ``day``."""
    return _validate(table_spec(table), day, _Source.from_table(data), emb_dim, allow_empty)


def validate_files(
    table: str, day: dt.date | None, fs, paths: list[str], emb_dim: int | None = None, allow_empty: bool = False
) -> Report:
    """Check a partition's data files (every file Spark reads, whatever its name).

    Never raises on bad data: unreadable files, per-file schema mismatches and failures while
    reading come back as problems naming the table, partition and file.
    """
    spec = table_spec(table)
    part = f"dt={day.isoformat()}" if day else "(unpartitioned)"
    files = _check_files(spec, part, fs, paths)
    if not files.ok:
        return files  # the data of a broken or mistyped file is not read (it could not be merged)
    try:
        return _validate(spec, day, _Source.from_files(fs, paths), emb_dim, allow_empty)
    except Exception as e:  # noqa: BLE001 - a validator must report, not crash
        return Report([Problem(spec.name, part, None, f"cannot be read: {type(e).__name__}: {_first_line(e)}")])


def _validate(spec: TableSpec, day: dt.date | None, src: _Source, emb_dim: int | None, allow_empty: bool = False) -> Report:
    part = f"dt={day.isoformat()}" if day else "(unpartitioned)"
    rep = Report()

    def bad(column: str | None, message: str, sample: list[dict] | None = None) -> None:
        rep.problems.append(Problem(spec.name, part, column, message, sample or []))

    # 1. columns present and typed as the contract says
    present = {f.name: f.type for f in src.schema}
    usable = []
    for col in spec.columns_for(present):  # declared columns, then pattern-accepted ones present
        if col.name not in present:
            bad(col.name, f"missing column (expected {col.type})")
            continue
        got = present[col.name]
        if not _type_ok(col.type, got):
            bad(col.name, f"wrong type: expected {col.type}, found {got}")
            continue
        usable.append(col.name)

    # 2. empty partition
    if src.num_rows == 0:
        if not (spec.allow_empty or allow_empty):
            bad(None, "empty partition (no rows)")
        return rep

    key_cols = [k for k in spec.key if k in usable]
    keys = src.columns(key_cols) if key_cols else None

    def sample_rows(mask: np.ndarray, extra: dict[str, pa.Array] | None = None) -> list[dict]:
        idx = np.flatnonzero(mask)[:SAMPLE_ROWS]
        rows = []
        for i in idx:
            row = {k: keys.column(k)[int(i)].as_py() for k in key_cols} if keys is not None else {"row": int(i)}
            for name, arr in (extra or {}).items():
                row[name] = _short(arr[int(i)].as_py())
            rows.append(row)
        return rows

    # 3. nulls in key or non-nullable columns
    for col in spec.columns_for(present):
        if col.name not in usable or col.nullable:
            continue
        arr = keys.column(col.name) if keys is not None and col.name in key_cols else src.columns([col.name]).column(0)
        n = arr.null_count
        if n:
            mask = np.asarray(pc.is_null(arr).to_numpy(zero_copy_only=False))
            kind = "null key" if col.name in spec.key else "null value"
            bad(col.name, f"{n} row(s) with {kind}", sample_rows(mask))

    # 4. duplicate keys
    if keys is not None and len(key_cols) == len(spec.key) and keys.num_rows:
        dup_mask = _duplicate_mask(keys)
        if dup_mask.any():
            bad(",".join(key_cols), f"{int(dup_mask.sum())} row(s) with a duplicate key ({', '.join(key_cols)})", sample_rows(dup_mask))

    # 5. embeddings: fixed dimension, finite values
    for name in spec.emb_columns:
        if name not in usable:
            continue
        arr = src.columns([name]).column(0).combine_chunks()
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(float)
        lengths = np.nan_to_num(lengths, nan=-1)
        if name == spec.lake_dim_column and emb_dim:
            expected = emb_dim
            why = f"the lake's emb_dim {emb_dim}"
        else:
            valid = lengths[lengths >= 0]
            expected = int(np.bincount(valid.astype(int)).argmax()) if len(valid) else 0
            why = f"the partition's common dimension {expected}"
        wrong = (lengths >= 0) & (lengths != expected)
        if wrong.any():
            bad(name, f"{int(wrong.sum())} row(s) with embedding dimension != {why}",
                sample_rows(wrong, {f"{name}_dim": pa.array(lengths.astype(int))}))
        flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64)
        if flat.size and not np.isfinite(flat).all():
            offsets = arr.offsets.to_numpy()
            finite = np.isfinite(flat)
            # a row is bad if any of its values is not finite
            bad_per_row = np.add.reduceat((~finite).astype(np.int64), offsets[:-1].clip(max=max(len(flat) - 1, 0))) if len(flat) else np.zeros(len(arr))
            bad_per_row = np.where(lengths > 0, bad_per_row, 0) > 0
            bad(name, f"{int(bad_per_row.sum())} row(s) with NaN or infinite values", sample_rows(bad_per_row))

    # 6. timestamps inside the partition's day (UTC)
    if spec.ts_column and spec.ts_column in usable and day is not None:
        ts = src.columns([spec.ts_column]).column(0).combine_chunks()
        micros = pc.cast(pc.cast(ts, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)
        lo = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
        hi = lo + 86_400 * 1_000_000
        outside = (micros < lo) | (micros >= hi)
        outside &= ~np.asarray(pc.is_null(ts).to_numpy(zero_copy_only=False))
        if outside.any():
            bad(spec.ts_column, f"{int(outside.sum())} row(s) with a timestamp outside {day.isoformat()} (UTC)",
                sample_rows(outside, {spec.ts_column: ts}))
    return rep


def _type_ok(expected: pa.DataType, got: pa.DataType) -> bool:
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(got)
    if pa.types.is_list(expected) and (pa.types.is_list(got) or pa.types.is_large_list(got)):
        return _type_ok(expected.value_type, got.value_type)
    if pa.types.is_struct(expected) and pa.types.is_struct(got):
        return len(expected) == len(got) and all(
            e.name == g.name and _type_ok(e.type, g.type) for e, g in zip(expected, got)
        )
    return expected == got


def _duplicate_mask(keys: pa.Table) -> np.ndarray:
    """Rows whose key occurs more than once (lexsort + neighbour compare: O(n log n), no row objects)."""
    cols = [np.asarray(keys.column(i).to_numpy(zero_copy_only=False)) for i in range(keys.num_columns)]
    n = len(cols[0])
    order = np.lexsort(cols[::-1])
    same_as_next = np.ones(n - 1, dtype=bool) if n > 1 else np.zeros(0, dtype=bool)
    for c in cols:
        sc = c[order]
        same_as_next &= sc[1:] == sc[:-1]
    dup_sorted = np.zeros(n, dtype=bool)
    dup_sorted[:-1] |= same_as_next
    dup_sorted[1:] |= same_as_next
    mask = np.zeros(n, dtype=bool)
    mask[order] = dup_sorted
    return mask


def _short(v):
    if isinstance(v, list) and len(v) > 4:
        return v[:4] + ["..."]
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return v
