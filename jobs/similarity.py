"""``spark-submit jobs/similarity.py --lake DIR --date D``: stage ``similarity`` for one day.

The stage itself is :func:`dualrec.stages.similarity.run`; this file only parses and exits.
"""

import sys
from pathlib import Path

if __name__ == "__main__":  # spark-submit runs this file directly, outside the installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.stages.similarity import run  # noqa: E402
from jobs.common import stage_main  # noqa: E402

__all__ = ["run"]

if __name__ == "__main__":
    sys.exit(stage_main("similarity", run))
