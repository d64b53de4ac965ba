"""Table contracts: one definition per table, from which PyArrow and Spark schemas derive."""

from schemas.tables import TABLES, Column, TableSpec, arrow_schema, spark_schema, table_spec

__all__ = ["TABLES", "Column", "TableSpec", "arrow_schema", "spark_schema", "table_spec"]
