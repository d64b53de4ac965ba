"""Model code without Spark: XGBoost activity model, PyTorch towers and ranker, FAISS indexes.

OpenMP threads of torch, XGBoost and FAISS sleep instead of spinning when they wait
(``OMP_WAIT_POLICY=PASSIVE``, set before any of them loads; an explicit setting wins). A batch
job shares its cores with Spark workers and other jobs: spinning threads stole the cores from
the ones doing the work (a two-tower epoch took 180 s with 2 spinning threads vs 32 s passive
on a loaded 2-core box, see BENCHMARKS.md "whole day").

MKL (torch's BLAS) runs in strict conditional-numerical-reproducibility mode with a fixed
thread count (``MKL_CBWR=AUTO,STRICT``, ``MKL_DYNAMIC=FALSE``, ``OMP_DYNAMIC=FALSE``; an
explicit setting wins). Without it a GEMM's result for one row depends on how many rows share
the call (1, 3 or 17 rows gave other bits than 2,368 at once) and on run-time thread
adjustment, so embeddings computed in Spark's Arrow batches, and a training step under load,
were not bitwise reproducible (issue 16, finding 5). Cost: none measurable on the two-tower
training loop.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for _k, _v in (("MKL_CBWR", "AUTO,STRICT"), ("MKL_DYNAMIC", "FALSE"), ("OMP_DYNAMIC", "FALSE")):
    os.environ.setdefault(_k, _v)


def torch_threads(requested: int | None) -> int:
    """Intra-op threads for a training loop: ``requested`` (0/None = all cores) capped at the cores
    of this machine; never more threads than cores."""
    cores = os.cpu_count() or 1
    return max(1, min(int(requested or cores), cores))
