"""Evaluation of a day (SPEC section 6): ``figures`` (each figure once), ``baselines`` (random,
popular, arrival, the exact optimum), ``day`` (reads one day of the lake, wires them up: :func:`evaluate`) and
``report`` (the HTML day report and trend page)."""

from dualrec.evaluation.day import REQUIRED_PATHS, evaluate, flatten, get_path, metrics_table, unflatten

__all__ = ["REQUIRED_PATHS", "evaluate", "flatten", "get_path", "metrics_table", "unflatten"]
