"""``spark-submit jobs/dispatch.py --lake DIR --date D``: stage ``dispatch`` for one day.

The stage itself is :func:`dualrec.stages.dispatch.run`; this file only parses and exits.
"""

import sys
from pathlib import Path

if __name__ == "__main__":  # spark-submit runs this file directly, outside the installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.stages.dispatch import run  # noqa: E402
from jobs.common import stage_main  # noqa: E402

__all__ = ["run"]

if __name__ == "__main__":
    sys.exit(stage_main("dispatch", run))
