"""Lake I/O: ``dt=``-partitioned Parquet tables and model artefacts, published atomically.

Layout::

    <lake>/_lake.json                       lake metadata (embedding dimension, ...)
    <lake>/<table>/dt=YYYY-MM-DD/part-*.parquet + _SUCCESS
    <lake>/_models/<name>/dt=YYYY-MM-DD/... + manifest.json + _SUCCESS
    <lake>/_truth/...                       synthetic ground truth (never read by the pipeline)

A partition is written into ``<table>/_staging/<uuid>/`` and then renamed into place, so a
reader never sees a half-written partition: a partition directory without ``_SUCCESS`` is
treated as absent. Local paths, ``file://``, ``hdfs://`` and ``s3a://`` (mapped to
PyArrow's ``s3``) go through :mod:`pyarrow.fs`; Spark reads and writes the same URIs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in _anti_join
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.tables import arrow_schema, spark_schema, table_spec
from schemas.validate import validate_arrow, validate_files

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
LAKE_META = "_lake.json"
VALIDATION = "_validation"  # per-partition validation results: <table>/dt=D/check.json (+ dropped.parquet)
DROPPED_FILE = "dropped.parquet"


def is_data_file(name: str) -> bool:
    """Hadoop/Spark's rule for the files of a directory it reads as data.

    Spark's file index skips names starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``
    checksums) and in-flight ``._COPYING_`` files, and reads every other file whatever its
    suffix (a Hive-style ``000001_0`` included). The validator uses the same rule, and
    :meth:`Lake.read_df` hands Spark exactly this list, so both read the same files.
    """
    return not (name.startswith("_") or name.startswith(".") or name.endswith("._COPYING_"))


class LakeError(RuntimeError):
    """A problem with the lake layout (missing partition, missing artefact ...)."""


def parse_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"not a date (want YYYY-MM-DD): {value!r}") from None


def date_range(start: str | dt.date, end: str | dt.date) -> list[dt.date]:
    s, e = parse_date(start), parse_date(end)
    return [s + dt.timedelta(days=i) for i in range((e - s).days + 1)]


@dataclass
class Lake:
    """A lake rooted at a local path or a Hadoop-compatible URI."""

    root: str

    def __post_init__(self) -> None:
        root = str(self.root).rstrip("/")
        if "://" not in root:
            import os

            root = os.path.abspath(root)
        self.root = root
        self._fs, self._base = _filesystem(root)

    # ------------------------------------------------------------------ paths
    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs

    def fs_path(self, rel: str) -> str:
        """Path inside :attr:`fs` (no scheme)."""
        return posixpath.join(self._base, rel) if rel else self._base

    def uri(self, rel: str = "") -> str:
        """URI Spark understands for a path relative to the lake root."""
        return posixpath.join(self.root, rel) if rel else self.root

    @staticmethod
    def partition_rel(table: str, day: dt.date | str) -> str:
        return f"{table}/dt={parse_date(day).isoformat()}"

    @staticmethod
    def model_rel(name: str, day: dt.date | str) -> str:
        return f"_models/{name}/dt={parse_date(day).isoformat()}"

    # ------------------------------------------------------------------ metadata
    def meta(self) -> dict[str, Any]:
        p = self.fs_path(LAKE_META)
        if self._fs.get_file_info(p).type != pafs.FileType.File:
            return {}
        with self._fs.open_input_stream(p) as f:
            return json.loads(f.read().decode())

    def write_meta(self, meta: dict[str, Any]) -> None:
        self._fs.create_dir(self._base, recursive=True)
        self.write_text(LAKE_META, json.dumps(meta, indent=2, sort_keys=True))

    def emb_dim(self) -> int | None:
        return self.meta().get("emb_dim")

    def allows_empty(self, table: str) -> bool:
        """Logged datasets may have days without uploads; they opt in via ``allow_empty_tables``."""
        return table in self.meta().get("allow_empty_tables", [])

    # ------------------------------------------------------------------ files
    def exists(self, rel: str) -> bool:
        return self._fs.get_file_info(self.fs_path(rel)).type != pafs.FileType.NotFound

    def write_text(self, rel: str, text: str) -> None:
        with self._fs.open_output_stream(self.fs_path(rel)) as f:
            f.write(text.encode())

    def read_text(self, rel: str) -> str:
        with self._fs.open_input_stream(self.fs_path(rel)) as f:
            return f.read().decode()

    def is_complete(self, rel: str) -> bool:
        return self._fs.get_file_info(self.fs_path(posixpath.join(rel, SUCCESS))).type == pafs.FileType.File

    def list_dt(self, rel_dir: str) -> list[dt.date]:
        """Complete ``dt=`` sub-directories of a folder, sorted."""
        sel = pafs.FileSelector(self.fs_path(rel_dir), allow_not_found=True)
        out = []
        for info in self._fs.get_file_info(sel):
            name = info.base_name
            if info.type == pafs.FileType.Directory and name.startswith("dt="):
                try:
                    day = dt.date.fromisoformat(name[3:])
                except ValueError:
                    log.warning("ignoring %s/%s: not a dt=YYYY-MM-DD partition", rel_dir, name)
                    continue
                if self.is_complete(posixpath.join(rel_dir, name)):
                    out.append(day)
        return sorted(out)

    # ------------------------------------------------------------------ publish
    @contextlib.contextmanager
    def publish_dir(self, rel: str) -> Iterator[str]:
        """Yield a staging directory (relative path); on success swap it into ``rel``.

        Nothing is visible at ``rel`` until the body finished without error. A rerun
        replaces the old directory; the old one is removed only after the new one is in.
        """
        parent, leaf = posixpath.split(rel)
        token = uuid.uuid4().hex
        staging = posixpath.join(parent, "_staging", f"{leaf}-{token}")
        self._fs.create_dir(self.fs_path(staging), recursive=True)
        try:
            yield staging
            if not self.is_complete(staging):
                self.write_text(posixpath.join(staging, SUCCESS), "")
        except BaseException:
            self._fs.delete_dir(self.fs_path(staging))
            raise
        target = self.fs_path(rel)
        trash = None
        if self._fs.get_file_info(target).type != pafs.FileType.NotFound:
            trash = self.fs_path(posixpath.join(parent, "_trash", f"{leaf}-{token}"))
            self._fs.create_dir(posixpath.dirname(trash), recursive=True)
            self._fs.move(target, trash)
        try:
            self._fs.move(self.fs_path(staging), target)
        except BaseException:
            # the swap failed half-way: put the previous version back rather than leave nothing
            if trash and self._fs.get_file_info(target).type == pafs.FileType.NotFound:
                self._fs.move(trash, target)
            raise
        if trash:
            self._fs.delete_dir(trash)
        log.debug("published %s", self.uri(rel))

    def has_partition(self, table: str, day: dt.date | str) -> bool:
        return self.is_complete(self.partition_rel(table, day))

    def partitions(self, table: str) -> list[dt.date]:
        return self.list_dt(table)

    def require_partition(self, table: str, day: dt.date | str, stage: str = "") -> None:
        if not self.has_partition(table, day):
            by = f" (needed by stage {stage})" if stage else ""
            raise LakeError(
                f"table {table!r}: partition dt={parse_date(day)} is missing or incomplete "
                f"at {self.uri(self.partition_rel(table, day))}{by}"
            )

    # ------------------------------------------------------------------ arrow I/O
    def write_table(self, table: str, day: dt.date | str, data: pa.Table, validate: bool = True) -> None:
        """Write one partition from PyArrow, conformed to the table contract, atomically."""
        data = conform_arrow(table, data)
        if validate:

            validate_arrow(
                table, parse_date(day), data, emb_dim=self.emb_dim(), allow_empty=self.allows_empty(table)
            ).raise_if_failed()
        with self.publish_dir(self.partition_rel(table, day)) as staging:
            with self._fs.open_output_stream(self.fs_path(posixpath.join(staging, "part-00000.parquet"))) as f:
                pq.write_table(data, f, compression="zstd")

    def read_table(self, table: str, day: dt.date | str, columns: list[str] | None = None) -> pa.Table:
        rel = self.partition_rel(table, day)
        if not self.is_complete(rel):
            raise LakeError(f"table {table!r}: partition dt={parse_date(day)} is missing at {self.uri(rel)}")
        files = self._data_files(rel)
        if not files:
            return arrow_schema(table).empty_table() if columns is None else arrow_schema(table).empty_table().select(columns)
        dropped = self.dropped_keys(table, day)
        want = columns
        if dropped is not None and columns is not None:
            want = list(dict.fromkeys([*columns, *dropped.column_names]))
        parts = [pq.read_table(f, filesystem=self._fs, columns=want) for f in files]
        out = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        if dropped is not None:
            out = _anti_join(out, dropped)
            if columns is not None:
                out = out.select(columns)
        return out

    def read_tables(self, table: str, days: Iterable[dt.date], columns: list[str] | None = None) -> pa.Table:
        """Several partitions with a ``dt`` column, for days that exist."""
        parts = []
        for d in days:
            if self.has_partition(table, d):
                t = self.read_table(table, d, columns)
                parts.append(t.append_column("dt", pa.array([d] * t.num_rows, pa.date32())))
        if not parts:
            schema = arrow_schema(table)
            if columns:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.append(pa.field("dt", pa.date32())).empty_table()
        return pa.concat_tables(parts)

    def _data_files(self, rel: str) -> list[str]:
        """Every data file of a partition directory (filesystem paths), by Spark's rule (:func:`is_data_file`)."""
        sel = pafs.FileSelector(self.fs_path(rel), recursive=False, allow_not_found=True)
        return sorted(
            i.path for i in self._fs.get_file_info(sel) if i.type == pafs.FileType.File and is_data_file(i.base_name)
        )

    def data_files(self, table: str, day: dt.date | str) -> list[str]:
        return self._data_files(self.partition_rel(table, day))

    # ------------------------------------------------------------------ validation state
    def fingerprint(self, table: str, day: dt.date | str) -> str:
        """Content version of a partition: hash of its listing (names, sizes, mtimes).

        Any redelivery, appended file or touched file changes it, so a cached validation
        result is reused only for exactly the bytes that were checked.
        """
        sel = pafs.FileSelector(self.fs_path(self.partition_rel(table, day)), recursive=True, allow_not_found=True)
        h = hashlib.sha1()
        for i in sorted(self._fs.get_file_info(sel), key=lambda x: x.path):
            h.update(f"{i.path.rsplit('/', 1)[-1]}|{i.type}|{i.size}|{i.mtime_ns}\n".encode())
        return h.hexdigest()

    @staticmethod
    def validation_rel(table: str, day: dt.date | str) -> str:
        return f"{VALIDATION}/{table}/dt={parse_date(day).isoformat()}"

    def read_check(self, table: str, day: dt.date | str, name: str = "check") -> dict[str, Any] | None:
        """A stored validation record (None when absent or unreadable: it is then recomputed)."""
        rel = f"{self.validation_rel(table, day)}/{name}.json"
        try:
            return json.loads(self.read_text(rel)) if self.exists(rel) else None
        except (OSError, ValueError):
            return None

    def write_check(self, table: str, day: dt.date | str, record: dict[str, Any], name: str = "check") -> None:
        rel = self.validation_rel(table, day)
        self._fs.create_dir(self.fs_path(rel), recursive=True)
        tmp = f"{rel}/.{name}.{uuid.uuid4().hex}.json"
        self.write_text(tmp, json.dumps(record, sort_keys=True, default=str))
        self._fs.move(self.fs_path(tmp), self.fs_path(f"{rel}/{name}.json"))

    def write_dropped(self, table: str, day: dt.date | str, keys: pa.Table | None) -> None:
        """Record (or clear, with None) the key rows a ``drop_and_report`` check removed from a partition.

        Readers (:meth:`read_table`, :meth:`read_df`) leave these rows out while the
        partition's fingerprint is the one the drop was computed for.
        """
        rel = f"{self.validation_rel(table, day)}/{DROPPED_FILE}"
        if keys is None or keys.num_rows == 0:
            if self.exists(rel):
                self._fs.delete_file(self.fs_path(rel))
            return
        self._fs.create_dir(self.fs_path(self.validation_rel(table, day)), recursive=True)
        keys = keys.replace_schema_metadata({"fingerprint": self.fingerprint(table, day)})
        with self._fs.open_output_stream(self.fs_path(rel)) as f:
            pq.write_table(keys, f)

    def dropped_keys(self, table: str, day: dt.date | str) -> pa.Table | None:
        rel = f"{self.validation_rel(table, day)}/{DROPPED_FILE}"
        if not self.exists(rel):
            return None
        t = pq.read_table(self.fs_path(rel), filesystem=self._fs)
        meta = t.schema.metadata or {}
        if meta.get(b"fingerprint", b"").decode() != self.fingerprint(table, day):
            return None  # the partition was redelivered since: the drop list is stale
        return t.replace_schema_metadata(None)

    # ------------------------------------------------------------------ spark I/O
    def read_df(self, spark, table: str, days: Iterable[dt.date | str], with_dt: bool = True, required: bool = False):
        """A Spark DataFrame over the complete partitions among ``days`` (typed by the contract)."""
        from pyspark.sql import functions as F


        days = [parse_date(d) for d in days]
        present = [d for d in days if self.has_partition(table, d)]
        if required:
            for d in days:
                if d not in present:
                    self.require_partition(table, d)
        schema = spark_schema(table)
        if not present:
            df = spark.createDataFrame([], schema)
            return df.withColumn("dt", F.lit(None).cast("date")) if with_dt else df
        # Spark reads exactly the files the validator checked (same listing rule), never its own listing
        paths = [self._file_uri(f) for d in present for f in self.data_files(table, d)]
        if not paths:
            df = spark.createDataFrame([], schema)
            return df.withColumn("dt", F.lit(None).cast("date")) if with_dt else df
        extra = self._pattern_names(table, present)
        df = (
            spark.read.schema(spark_schema(table, with_dt=True, names=extra))
            .option("basePath", self.uri(table))
            .parquet(*paths)
        )
        drops = [(d, k) for d in present if (k := self.dropped_keys(table, d)) is not None]
        if drops:
            keys = pa.concat_tables(
                [k.append_column("dt", pa.array([d] * k.num_rows, pa.date32())) for d, k in drops],
                promote_options="permissive",
            )
            df = df.join(spark.createDataFrame(keys.to_pandas()), [*keys.column_names], "left_anti")
        return df if with_dt else df.drop("dt")

    def _file_uri(self, fs_path: str) -> str:
        """Spark URI of a file listed through :attr:`fs` (a path under the lake root)."""
        rel = posixpath.relpath(fs_path, self._base)
        return self.uri(rel)

    def _pattern_names(self, table: str, days: list[dt.date]) -> list[str]:
        """Pattern-accepted columns (e.g. ``score_<channel>``) stored in the partitions, from the
        Parquet footers: a contract with column patterns is read with what was written."""
        spec = table_spec(table)
        if not spec.column_patterns:
            return []
        names: list[str] = []
        for d in days:
            for f in self._data_files(self.partition_rel(table, d)):
                names += [n for n in pq.read_schema(f, filesystem=self._fs).names if n not in names]
        return [c.name for c in spec.pattern_columns(names)]

    def write_df(self, df, table: str, day: dt.date | str, validate: bool = True, coalesce: int | None = 1) -> None:
        """Write one partition from Spark, conformed to the contract, atomically.

        The staged files are validated before the swap, so a contract violation raises
        and nothing is published.
        """
        df = conform_df(table, df)
        if coalesce:
            df = df.coalesce(coalesce)
        with self.publish_dir(self.partition_rel(table, day)) as staging:
            df.write.mode("overwrite").option("compression", "zstd").parquet(self.uri(staging))
            if validate:
                self.validate_dir(table, day, staging).raise_if_failed()

    def validate_dir(self, table: str, day: dt.date | str | None, rel: str | None = None):
        """Validate the Parquet files of a partition (or of a staging directory)."""

        day = parse_date(day) if day is not None else None
        rel = rel or self.partition_rel(table, day)
        return validate_files(
            table, day, self._fs, self._data_files(rel), emb_dim=self.emb_dim(), allow_empty=self.allows_empty(table)
        )

    # ------------------------------------------------------------------ models
    def model_days(self, name: str) -> list[dt.date]:
        return self.list_dt(f"_models/{name}")

    def latest_model_before(self, name: str, day: dt.date | str, inclusive: bool = False) -> dt.date | None:
        """Latest complete artefact strictly before ``day`` (warm starts must not see the future)."""
        d = parse_date(day)
        days = [m for m in self.model_days(name) if (m <= d if inclusive else m < d)]
        return days[-1] if days else None


def _anti_join(data: pa.Table, keys: pa.Table) -> pa.Table:
    """Rows of ``data`` whose key (the columns of ``keys``) is not in ``keys``, order kept."""
    cols = keys.column_names
    idx = data.append_column("__row", pa.array(range(data.num_rows), pa.int64()))
    j = idx.select([*cols, "__row"]).join(keys, cols, join_type="left anti")
    rows = pa.compute.sort_indices(j.column("__row"))
    return data.take(pa.compute.take(j.column("__row"), rows))


def conform_arrow(table: str, data: pa.Table) -> pa.Table:
    """Select and cast columns to the contract; missing columns are an error naming the table."""
    schema = arrow_schema(table, data.column_names)  # pattern columns (score_<channel>) are kept
    missing = [f.name for f in schema if f.name not in data.column_names]
    if missing:
        raise ValueError(f"table {table!r}: missing column(s) {', '.join(missing)} in data being written")
    return pa.Table.from_arrays([data.column(f.name).cast(f.type) for f in schema], schema=schema)


def conform_df(table: str, df):
    from pyspark.sql import functions as F


    schema = spark_schema(table, names=df.columns)  # pattern columns (score_<channel>) are kept, not dropped
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"table {table!r}: missing column(s) {', '.join(missing)} in data being written")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if root.startswith("file://"):
        return pafs.LocalFileSystem(), root[len("file://"):]
    if "://" not in root:
        return pafs.LocalFileSystem(), root
    rest = root.split("://", 1)[1]
    if "@" in rest and ":" in rest.split("@", 1)[0]:  # user:secret@host (a secret may itself hold '/')
        # never echo the URI: it holds the credential we refuse to log
        raise ValueError(
            f"lake root {root.split('://', 1)[0]}://<redacted>: credentials must not be embedded in the lake URI; "
            "give them through the environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or the Airflow connection"
        )
    uri = root
    if uri.startswith("s3a://") or uri.startswith("s3n://"):
        uri = "s3://" + uri.split("://", 1)[1]
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path
