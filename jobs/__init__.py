"""Thin entry points: one file per Spark stage (runnable with spark-submit) and the CLI."""
