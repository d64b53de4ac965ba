"""Model code without Spark: XGBoost activity model, PyTorch towers and ranker, FAISS indexes.

OpenMP threads of torch, XGBoost and FAISS sleep instead of spinning when they wait
(``OMP_WAIT_POLICY=PASSIVE``, set before any of them loads; an explicit setting wins). A batch
job shares its cores with Spark workers and other jobs: spinning threads stole the cores from
the ones doing the work (a two-tower epoch took 180 s with 2 spinning threads vs 32 s passive
on a loaded 2-core box, see BENCHMARKS.md "whole day").
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def torch_threads(requested: int | None) -> int:
    """Intra-op threads for a training loop: ``requested`` (0/None = all cores) capped at the cores
    of this machine; never more threads than cores."""
    cores = os.cpu_count() or 1
    return max(1, min(int(requested or cores), cores))
