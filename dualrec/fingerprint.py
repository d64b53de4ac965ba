"""Content fingerprints of published partitions and artefacts: which stage of two runs first differs.

Why: "a rerun with the same seed gives the same result" is checked by comparing runs, and a
benchmark does not keep its lakes. Parquet files of two identical runs differ in their bytes
(writer metadata, row order, file split), so a fingerprint is computed from the rows: an
order-independent sum (mod 2^64) of one SplitMix64 hash per row over the exact bits of every
value (floats by their bit patterns, lists element by element in order, nulls distinct from any
value). Equal fingerprints mean the same multiset of rows; one flipped bit changes it. Each
table is published by one stage (:mod:`dualrec.registry`), so the first table whose
fingerprint differs names the first stage that differs. Read batch by batch on the driver:
memory stays bounded by a batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dualrec.hashing import GOLDEN, splitmix64
from dualrec.lake import Lake
from dualrec.registry import STAGE_SPECS

log = logging.getLogger(__name__)

# rows that are wall-clock measurements, not results (they differ between any two runs): left out
_VOLATILE_ROWS = {"metrics": ("metric", re.compile(r"seconds|per_second"))}
_NULL = np.uint64(0x6A09E667F3BCC908)  # the hash of a null value (any fixed constant not produced by data)


def _u64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.uint64)


def _value_bits(arr: pa.Array) -> np.ndarray:
    """One uint64 per element carrying the element's exact value (nulls not yet handled)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _value_bits(arr.dictionary_decode())
    if pa.types.is_boolean(t):
        return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(np.uint64)
    if pa.types.is_floating(t):
        width = {16: np.uint16, 32: np.uint32, 64: np.uint64}[t.bit_width]
        dtype = {16: np.float16, 32: np.float32, 64: np.float64}[t.bit_width]
        v = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        return v.view(width).astype(np.uint64)
    if pa.types.is_integer(t) or pa.types.is_temporal(t):
        v = pc.fill_null(arr.view(pa.int32()) if t.bit_width == 32 and not pa.types.is_integer(t) else arr, 0)
        return v.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        enc = pc.fill_null(arr, "" if "string" in str(t) else b"").dictionary_encode()
        words = np.array(
            [int.from_bytes(hashlib.blake2b(v.as_py().encode() if isinstance(v.as_py(), str) else v.as_py(),
                                            digest_size=8).digest(), "little") for v in enc.dictionary],
            dtype=np.uint64,
        )
        return words[enc.indices.to_numpy(zero_copy_only=False)] if len(words) else np.zeros(len(arr), np.uint64)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _list_bits(arr)
    if pa.types.is_struct(t):
        out = np.zeros(len(arr), np.uint64)
        with np.errstate(over="ignore"):
            for k, child in enumerate(arr.flatten()):  # flatten: children sliced to the struct's offset
                out ^= splitmix64(_column_hash(child) + np.uint64((k + 1) * GOLDEN % (1 << 64)))
        return out
    raise TypeError(f"fingerprint: unsupported Arrow type {t}")


def _list_bits(arr: pa.Array) -> np.ndarray:
    """A list's hash: its length and each element's hash at its position, combined in order."""
    arr = arr.cast(pa.list_(arr.type.value_type)) if not pa.types.is_list(arr.type) else arr
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)  # null lists have length 0
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0]) if len(arr) else arr.values.slice(0, 0)
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    elem = _column_hash(values)
    pos = np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    with np.errstate(over="ignore"):
        h = splitmix64(elem + _u64(pos) * np.uint64(GOLDEN))
        out = np.zeros(len(arr), np.uint64)
        nz = lengths > 0
        if nz.any():
            sums = np.add.reduceat(h, offsets[:-1][nz])
            out[nz] = sums
        return splitmix64(out ^ splitmix64(_u64(lengths)))


def _column_hash(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One uint64 per row of a column: the value's hash, or the null constant."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    h = splitmix64(_value_bits(arr))
    if arr.null_count:
        h = np.where(arr.is_null().to_numpy(zero_copy_only=False), _NULL, h)
    return h


def batch_fingerprint(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> tuple[int, int]:
    """(rows, sum of the row hashes mod 2^64) of ``columns`` of one batch."""
    n = batch.num_rows
    if n == 0:
        return 0, 0
    row = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for k, c in enumerate(columns):
            row ^= splitmix64(_column_hash(batch.column(c)) + np.uint64((k + 1) * GOLDEN % (1 << 64)))
        return n, int(splitmix64(row).sum(dtype=np.uint64))


def table_fingerprint(tables, columns: list[str] | None = None) -> dict:
    """Fingerprint of an iterable of Arrow batches/tables with the same columns (any order, any split).

    Returns ``{"rows": n, "hash": 16 hex digits}``; columns are matched by name (``columns``
    default: those of the first batch, sorted), so a different column order gives the same result."""
    rows, total = 0, 0
    for b in tables:
        cols = sorted(b.schema.names) if columns is None else columns
        columns = cols
        n, h = batch_fingerprint(b, cols)
        rows += n
        total = (total + h) % (1 << 64)
    return {"rows": rows, "hash": f"{total:016x}"}


def partition_fingerprint(lake: Lake, table: str, day: dt.date | str, batch_rows: int = 262_144) -> dict | None:
    """Fingerprint of ``table`` dt=``day`` (None when the partition is absent), read file by file.

    Rows that record wall-clock time (``metrics``: ``cost.stage_seconds.*`` ...) are left out."""
    if not lake.has_partition(table, day):
        return None

    volatile = _VOLATILE_ROWS.get(table)

    def batches():
        for f in lake.data_files(table, day):
            for b in pq.ParquetFile(f, filesystem=lake.fs).iter_batches(batch_size=batch_rows):
                if volatile is not None:
                    col, pattern = volatile
                    keep = [not pattern.search(v or "") for v in b.column(col).to_pylist()]
                    b = b.filter(pa.array(keep))
                yield b

    return table_fingerprint(batches())


def artifact_fingerprint(lake: Lake, name: str, day: dt.date | str) -> str | None:
    """SHA-1 over the files of ``_models/<name>/dt=D`` (names and bytes, sorted); None when absent.

    Artefacts are written by our own code (no writer timestamps), so bytes are the right measure."""
    rel = Lake.model_rel(name, day)
    if not lake.is_complete(rel):
        return None
    infos = lake.fs.get_file_info(pafs.FileSelector(lake.fs_path(rel), recursive=True))
    h = hashlib.sha1()
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        h.update(info.path.rsplit("/", 1)[-1].encode())
        with lake.fs.open_input_stream(info.path) as f:
            h.update(f.read())
    return h.hexdigest()


def day_fingerprints(lake: Lake, day: dt.date | str, tables: list[str], artifacts: list[str]) -> dict:
    """Fingerprints of the given tables and artefacts of one day (absent ones omitted)."""
    out: dict = {"tables": {}, "artifacts": {}}
    for t in tables:
        if (fp := partition_fingerprint(lake, t, day)) is not None:
            out["tables"][t] = fp
    for a in artifacts:
        if (h := artifact_fingerprint(lake, a, day)) is not None:
            out["artifacts"][a] = h
    return out


def stage_outputs() -> tuple[list[str], list[str]]:
    """Every table and artefact a day's stages publish, in stage order (:mod:`dualrec.registry`)."""
    tables = [t for s in STAGE_SPECS for t in s.outputs]
    artifacts = [a for s in STAGE_SPECS for a in s.artifacts]
    return tables, artifacts


def first_difference(a: dict, b: dict) -> dict | None:
    """The first stage (in day order) whose published tables or artefacts differ between two
    :func:`day_fingerprints` results, with what differs; None when everything both hold agrees."""
    for s in STAGE_SPECS:
        diff = [t for t in s.outputs if a["tables"].get(t) != b["tables"].get(t)]
        diff += [f"_models/{x}" for x in s.artifacts if a["artifacts"].get(x) != b["artifacts"].get(x)]
        if diff:
            return {"stage": s.name, "differs": diff}
    return None
