"""Helpers for the slow tests that start real services (Spark standalone, Airflow): free ports,
daemons in their own process group (stopped with everything they spawned), readiness polling,
and building the package wheel the way a user does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("dualrec", "jobs", "models", "schemas")

# The day every route test runs (tiny_world has 2026-01-01 .. 2026-01-14) and its config: small
# knobs, since these tests are about the route (local mode, cluster, scheduler, CLI), not model
# quality. The session fixture ``tiny_day`` (conftest.py) runs this day once in local mode.
ROUTE_DAY = "2026-01-10"
ROUTE_CONFIG = (
    "spark: {shuffle_partitions: 2}\n"
    "activity: {n_estimators: 20, train_target_days: 2, lookback_days: 7, early_stopping_rounds: 5}\n"
    "two_tower: {epochs: 1, train_window_days: 7, recall_queries: 50, torch_threads: 1}\n"
    "retrieval: {k: {two_tower: 200, i2i2u: 100, i2u2u: 100}}\n"
    "rank: {epochs: 1, train_window_days: 2, user_window_days: 3, item_history_days: 2, max_train_rows: 20000,"
    " torch_threads: 1}\n"
    "dispatch: {L: 50, batches_per_day: 4}\n"
    "metrics: {max_items: 100}\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


class Daemon:
    """A long-running command in its own session; :meth:`stop` ends its whole process group."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
        self.name, self.cmd, self.env, self.log, self.cwd = name, cmd, env, Path(log), cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and _group_alive(pgid):
                self.proc.poll()
                time.sleep(0.2)
            if not _group_alive(pgid):
                break
        self.proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_for(ready: Callable[[], bool], timeout: float, what: str, *daemons: Daemon, every: float = 1.0) -> None:
    """Poll ``ready`` until true; fail early, with the logs, when a daemon died."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready():
                return
        except (OSError, ValueError):
            pass
        for d in daemons:
            if not d.alive():
                raise AssertionError(f"{d.name} exited with {d.proc.returncode} before {what} was ready:\n{d.tail()}")
        time.sleep(every)
    logs = "\n".join(f"--- {d.name}\n{d.tail()}" for d in daemons)
    raise AssertionError(f"{what} not ready after {timeout:.0f}s\n{logs}")


def build_wheel(out_dir: Path) -> Path:
    """``pip wheel --no-deps`` of the package sources (copied, so the tree gets no build/ dir)."""
    src = Path(out_dir) / "src"
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("setup.py", "README.md"):
        shutil.copy(REPO / f, src / f)
    dist = Path(out_dir) / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist),
         str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("dualrec-*.whl")
    return wheel
