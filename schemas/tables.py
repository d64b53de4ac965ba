"""Every table of the lake, defined once.

Types are PyArrow types; the Spark schema is derived from them so the two can never drift.
``dt`` is the Hive partition column and is not stored inside the Parquet files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from schemas.feedback import FEEDBACK_FLAGS, RANK_TASKS

EMB = pa.list_(pa.float32())


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = False
    doc: str = ""


@dataclass(frozen=True)
class ColumnPattern:
    """Columns accepted by name pattern (e.g. one ``score_<channel>`` per retrieval channel).

    The contract stays independent of which channels exist: a column whose whole name matches
    ``regex`` is kept, typed and validated like a declared column."""

    regex: str
    type: pa.DataType
    nullable: bool = True
    doc: str = ""

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.regex, name) is not None


@dataclass(frozen=True)
class TableSpec:
    """Contract of one table: columns, key, and which checks the validator runs."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    kind: str = "derived"  # "input" (delivered upstream) or "derived" (written by a stage)
    ts_column: str | None = None  # must fall inside the partition's day (UTC)
    emb_columns: tuple[str, ...] = ()  # list<float32>: fixed dimension, finite
    lake_dim_column: str | None = None  # embedding whose dimension is the lake's emb_dim
    allow_empty: bool = False
    doc: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)
    column_patterns: tuple[ColumnPattern, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def pattern_columns(self, names) -> list[Column]:
        """Undeclared columns among ``names`` that a pattern accepts, in the order given."""
        declared = set(self.names)
        out = []
        for n in names:
            if n in declared:
                continue
            for p in self.column_patterns:
                if p.matches(n):
                    out.append(Column(n, p.type, p.nullable, p.doc))
                    break
        return out

    def columns_for(self, names=()) -> tuple[Column, ...]:
        """The declared columns plus the pattern columns present in ``names``."""
        return (*self.columns, *self.pattern_columns(names))

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name}")


def C(name: str, t: pa.DataType, nullable: bool = False, doc: str = "") -> Column:
    return Column(name, t, nullable, doc)


_TS = pa.timestamp("us", tz="UTC")
_FEEDBACK_FLAGS = FEEDBACK_FLAGS

_SPECS: list[TableSpec] = [
    # ------------------------------------------------------------------ inputs
    TableSpec(
        "users",
        (
            C("user_id", pa.int64()),
            C("register_dt", pa.date32()),
            C("age_bucket", pa.int32()),
            C("gender", pa.int32()),
            C("region", pa.int32()),
            C("device", pa.int32()),
            C("follower_count", pa.int64()),
        ),
        key=("user_id",),
        kind="input",
        doc="Snapshot of every registered user as of dt.",
    ),
    TableSpec(
        "items",
        (
            C("item_id", pa.int64()),
            C("creator_id", pa.int64()),
            C("upload_ts", _TS),
            C("category", pa.int32()),
            C("duration_ms", pa.int64()),
            C("content_emb", EMB),
        ),
        key=("item_id",),
        kind="input",
        ts_column="upload_ts",
        emb_columns=("content_emb",),
        lake_dim_column="content_emb",
        doc="Items uploaded on dt (a lake may allow empty days via _lake.json allow_empty_tables).",
    ),
    TableSpec(
        "visits",
        (C("user_id", pa.int64()), C("sessions", pa.int32()), C("watch_ms", pa.int64())),
        key=("user_id",),
        kind="input",
        doc="One row per user active on dt.",
    ),
    TableSpec(
        "interactions",
        (
            C("user_id", pa.int64()),
            C("item_id", pa.int64()),
            C("ts", _TS),
            *(C(f, pa.int8()) for f in _FEEDBACK_FLAGS),
            C("play_time_ms", pa.int64()),
        ),
        key=("user_id", "item_id"),
        kind="input",
        ts_column="ts",
        doc="One row per exposure on dt with its feedback flags.",
    ),
    # ------------------------------------------------------------------ derived
    TableSpec(
        "activity_scores",
        (C("user_id", pa.int64()), C("p_active", pa.float64()), C("available", pa.bool_())),
        key=("user_id",),
        doc="p_active is for dt+1, the day dispatched users are expected to visit.",
    ),
    TableSpec(
        "user_embeddings",
        (C("user_id", pa.int64()), C("emb", EMB)),
        key=("user_id",),
        emb_columns=("emb",),
        allow_empty=True,
        doc="Two-tower user embeddings of every user on dt; empty on a day without uploads, when nothing "
        "retrieves (two_tower.train_without_uploads: false).",
    ),
    TableSpec(
        "item_similar",
        (C("item_id", pa.int64()), C("similar_item_id", pa.int64()), C("sim", pa.float32())),
        key=("item_id", "similar_item_id"),
        allow_empty=True,
        doc="S^I: content-similar recent items of each item uploaded on dt.",
    ),
    TableSpec(
        "item_positive_users",
        (C("item_id", pa.int64()), C("user_id", pa.int64()), C("ts", _TS), C("weight", pa.float32())),
        key=("item_id", "user_id"),
        allow_empty=True,
        doc="H^I: positive users of recent items with the time of their first positive feedback.",
    ),
    TableSpec(
        "user_similar",
        (C("user_id", pa.int64()), C("similar_user_id", pa.int64()), C("sim", pa.float32())),
        key=("user_id", "similar_user_id"),
        allow_empty=True,
        doc="S^U: similar available users of users seen in H^I.",
    ),
    TableSpec(
        "candidates",
        (
            C("batch", pa.int32()),
            C("item_id", pa.int64()),
            C("user_id", pa.int64()),
            C("channels", pa.list_(pa.string())),
        ),
        key=("item_id", "user_id"),
        allow_empty=True,
        column_patterns=(
            ColumnPattern(r"score_[a-z][a-z0-9_]*", pa.float32(), True, "one per retrieval channel; null when that channel did not find the pair"),
        ),
        doc="Merged retrieval candidates: one score_<channel> column per channel (dualrec.channels registry).",
    ),
    TableSpec(
        "ranked",
        (
            C("batch", pa.int32()),
            C("item_id", pa.int64()),
            C("user_id", pa.int64()),
            C("channels", pa.list_(pa.string())),
            *(C(f"s_{t}", pa.float32()) for t in RANK_TASKS),
            C("theta", pa.float32()),
            C("g", pa.float32()),
        ),
        key=("item_id", "user_id"),
        allow_empty=True,
    ),
    TableSpec(
        "match_sets",
        (
            C("batch", pa.int32()),
            C("user_id", pa.int64()),
            C("item_id", pa.int64()),
            C("g", pa.float32()),
            C("rank_in_item", pa.int32()),
            C("channels", pa.list_(pa.string())),
        ),
        key=("user_id", "item_id"),
        allow_empty=True,
    ),
    TableSpec(
        "user_match_sets",
        (
            C("user_id", pa.int64()),
            C(
                "items",
                pa.list_(pa.struct([pa.field("item_id", pa.int64(), False), pa.field("g", pa.float32(), False)])),
            ),
        ),
        key=("user_id",),
        allow_empty=True,
        doc="D_u: the per-user rollup read by the user-side ranker.",
    ),
    TableSpec(
        "available_users",
        (C("batch", pa.int32()), C("user_id", pa.int64()), C("matched", pa.int32()), C("available", pa.bool_())),
        key=("batch", "user_id"),
        allow_empty=True,
        doc="Store state after each batch: |D_u| so far and whether u is still in U~.",
    ),
    TableSpec(
        "buckets",
        (
            C("kind", pa.string(), doc="'user' or 'creator'"),
            C("id", pa.int64(), doc="user_id or creator_id"),
            C("arm", pa.string()),
        ),
        key=("kind", "id"),
        allow_empty=True,
        doc="Experiment assignment of day dt (written by dispatch only when experiment.arms has >= 2 arms): "
        "every user of activity_scores and every creator of items with its arm (dualrec.experiment).",
    ),
    TableSpec(
        "metrics",
        (C("metric", pa.string()), C("value", pa.float64(), nullable=True), C("detail", pa.string(), nullable=True)),
        key=("metric",),
        allow_empty=True,
    ),
]

TABLES: dict[str, TableSpec] = {s.name: s for s in _SPECS}
INPUT_TABLES = tuple(s.name for s in _SPECS if s.kind == "input")


def table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}") from None


def arrow_schema(name: str, names=()) -> pa.Schema:
    """PyArrow schema of a table (without the dt partition column); ``names``: column names of
    the data at hand, whose pattern-accepted columns (see :class:`ColumnPattern`) are added."""
    spec = table_spec(name)
    return pa.schema([pa.field(c.name, c.type, c.nullable) for c in spec.columns_for(names)])


def spark_schema(name: str, with_dt: bool = False, names=()):
    """Spark StructType derived from the PyArrow definition (``names`` as in :func:`arrow_schema`)."""
    from pyspark.sql import types as T

    fields = [T.StructField(c.name, arrow_to_spark(c.type), c.nullable) for c in table_spec(name).columns_for(names)]
    if with_dt:
        fields.append(T.StructField("dt", T.DateType(), False))
    return T.StructType(fields)


def arrow_to_spark(t: pa.DataType):
    """Map the PyArrow types used in the contracts to Spark types."""
    from pyspark.sql import types as T

    simple = {
        pa.int8(): T.ByteType(),
        pa.int16(): T.ShortType(),
        pa.int32(): T.IntegerType(),
        pa.int64(): T.LongType(),
        pa.float32(): T.FloatType(),
        pa.float64(): T.DoubleType(),
        pa.bool_(): T.BooleanType(),
        pa.string(): T.StringType(),
        pa.date32(): T.DateType(),
    }
    if t in simple:
        return simple[t]
    if pa.types.is_timestamp(t):
        return T.TimestampType()
    if pa.types.is_list(t):
        return T.ArrayType(arrow_to_spark(t.value_type), t.value_field.nullable)
    if pa.types.is_struct(t):
        return T.StructType([T.StructField(f.name, arrow_to_spark(f.type), f.nullable) for f in t])
    raise TypeError(f"no Spark mapping for arrow type {t}")
