"""One progress display for a run: a live ``rich`` bar on a terminal, plain log lines elsewhere.

Airflow task logs and CI capture stderr as a file, where a redrawn bar is noise; an operator
at a terminal wants to see "stage 4/7, batch 9/24, 1:12 elapsed, ~0:40 left". Both get the
same events (:meth:`Progress.stage_started`, :meth:`Progress.stage_done`, :meth:`Progress.step`)
from :func:`dualrec.pipeline.run_day` and from stages that loop (dispatch micro-batches).
The ETA comes from the stage timings of the most recent completed day, when there is one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

log = logging.getLogger("dualrec.progress")


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of one day's stages. ``plain`` lines go to ``say`` (default: the logger)."""

    def __init__(
        self,
        say: Callable[[str], None] | None = None,
        stream: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        self._say = say
        self._stream = stream or sys.stderr
        self._live_wanted = (self._stream.isatty() if live is None else live) and say is None
        self._rich: Any = None
        self._task: Any = None
        self._label = ""
        self._t0 = time.monotonic()
        self._expected: dict[str, float] = {}
        self._stages: list[str] = []
        self._done: dict[str, float] = {}

    # -------------------------------------------------------------- lifecycle
    def start_day(self, day: Any, stages: list[str], expected: dict[str, float] | None = None) -> None:
        self._label = str(day)
        self._stages = list(stages)
        self._expected = dict(expected or {})
        self._done = {}
        self._t0 = time.monotonic()
        if self._live_wanted and self._rich is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=Console(file=self._stream),
                transient=False,
            )
            self._rich.start()
        if self._rich is not None:
            self._task = self._rich.add_task(f"{self._label}", total=len(self._stages), detail="", eta="")

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- events
    def eta(self) -> float | None:
        """Seconds left, from the previous day's timings of the stages not yet done."""
        if not self._expected:
            return None
        left = [self._expected.get(s) for s in self._stages if s not in self._done]
        if any(v is None for v in left):
            return None
        return float(sum(left))  # type: ignore[arg-type]

    def stage_started(self, i: int, name: str) -> None:
        n = len(self._stages)
        eta = self.eta()
        self._emit(f"[{self._label}] stage {i}/{n} {name} ...", detail=f"{i}/{n} {name}", eta=eta)

    def step(self, name: str, j: int, n: int) -> None:
        """A stage's inner loop (e.g. dispatch batch j of n)."""
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, detail=f"{name} {j}/{n}")
        elif j == n or j == 1 or j % max(1, n // 4) == 0:
            self._line(f"[{self._label}]   {name} {j}/{n}")

    def stage_done(self, i: int, name: str, seconds: float, brief: str = "") -> None:
        self._done[name] = seconds
        n = len(self._stages)
        elapsed = time.monotonic() - self._t0
        eta = self.eta()
        tail = f" (elapsed {_clock(elapsed)}" + (f", ~{_clock(eta)} left)" if eta is not None else ")")
        msg = f"[{self._label}] stage {i}/{n} {name} done in {seconds:.1f}s{tail}" + (f" {brief}" if brief else "")
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, advance=1, detail=f"{i}/{n} {name} done", eta=self._eta_text(eta))
            self._rich.console.print(msg, highlight=False)
        else:
            self._line(msg)

    def message(self, msg: str) -> None:
        if self._rich is not None:
            self._rich.console.print(msg, highlight=False)
        else:
            self._line(msg)

    # -------------------------------------------------------------- output
    @staticmethod
    def _eta_text(eta: float | None) -> str:
        return f"~{_clock(eta)} left" if eta is not None else ""

    def _emit(self, line: str, detail: str, eta: float | None) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, detail=detail, eta=self._eta_text(eta))
        else:
            self._line(line)

    def _line(self, msg: str) -> None:
        if self._say is not None:
            self._say(msg)
        else:
            log.info("%s", msg)


def as_progress(progress: Progress | Callable[[str], None] | None) -> Progress:
    """Accept a :class:`Progress`, a plain ``say(msg)`` callable (older callers) or None."""
    if isinstance(progress, Progress):
        return progress
    return Progress(say=progress, live=False)
