"""A whole day at realistic scale (SPEC section 7): ``dualrec run`` for one day, measured per stage.

    python benchmarks/day.py --preset small --worlds /work/worlds [--json out.json] [--peer-als] [--contended]

1. The world. A synthetic world of the preset is generated once and cached under
   ``--worlds DIR/<preset>_seed<S>_<start>_<N>d/lake`` (outside the repo; rebuilt when missing,
   with a file lock so two benchmarks never synthesise the same world at once). N is the
   history every lookback window of the default config needs (activity: lookback + training
   target days; two-tower, ranker, similarity windows) plus day D and D+1 (evaluation). The
   cached files are made read-only.
2. The day. The cached lake is overlaid into a fresh run directory with hard links (input
   partitions are shared read-only; every output the day writes is a new file), and
   ``dualrec run --lake RUN --date D`` runs in a fresh process. D is the second-to-last
   synthetic day, so ``evaluate`` has D+1.
3. The figures. The stage boundaries come from the run's progress lines; stage wall times from
   ``_runs/dt=D/stages.json``. A sampler (psutil, every ``--sample`` seconds) sums CPU time and
   RSS over the whole process tree (driver, Spark JVM, Python workers), giving CPU seconds and
   peak RSS per stage; the total CPU is the larger of the sampled sum and ``getrusage`` of reaped children. Rows out =
   rows of the partitions of day D each stage published (Parquet footers); rows in = rows of the
   input partitions the stage reads under the default config windows (upper bound: stages
   filter some of them), rows/s = rows in / wall.
4. Options. ``--peer-als`` then runs the ALS peer (``benchmarks/peer_als.py``) on the same
   lake and day. ``--contended`` runs the same day a second time beside a CPU hog (one busy
   process per core) and reports the slowdown ratio. ``--evaluate`` also runs
   ``dualrec evaluate --json`` and keeps the quality figures. Load average is printed with
   every run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from filelock import FileLock  # noqa: E402

from dualrec.config import DualRecConfig  # noqa: E402
from dualrec.fingerprint import day_fingerprints, first_difference, stage_outputs  # noqa: E402
from dualrec.lake import Lake  # noqa: E402

log = logging.getLogger("bench.day")

STAGES = ("activity", "two_tower", "similarity", "retrieve", "rank", "dispatch", "metrics")
OUTPUTS = {
    "activity": ("activity_scores",),
    "two_tower": ("user_embeddings",),
    "similarity": ("item_similar", "item_positive_users", "user_similar"),
    "retrieve": ("candidates",),
    "rank": ("ranked",),
    "dispatch": ("available_users", "match_sets", "user_match_sets"),
    "metrics": ("metrics",),
}
QUALITY_PATHS = ("activity.auc", "quality.feedback_per_pair", "retrieval.truth_recall", "ranking.auc",
                 "dispatch.channel_share", "quality.optimum_ratio")


def history_days(cfg: DualRecConfig) -> int:
    """Days of history before D that every lookback window of ``cfg`` needs."""
    a, t, s, r = cfg.activity, cfg.two_tower, cfg.similarity, cfg.rank
    return max(
        a.lookback_days + a.train_target_days,
        t.train_window_days,
        s.item_window_days, s.positives_window_days,
        r.train_window_days + r.item_history_days + r.user_window_days,
    )  # (the item_lookback_days windows only look up items' content: older items need not exist)


def reads(cfg: DualRecConfig) -> dict[str, dict[str, int]]:
    """Input partitions (table -> days ending at D) each stage reads under ``cfg`` (rows-in figure)."""
    a, t, s, r = cfg.activity, cfg.two_tower, cfg.similarity, cfg.rank
    rank_hist = r.train_window_days + r.item_history_days + r.user_window_days
    return {
        "activity": {"interactions": a.lookback_days + a.train_target_days, "visits": a.lookback_days + a.train_target_days,
                     "users": a.train_target_days + 1},
        "two_tower": {"interactions": t.train_window_days, "users": 1, "items": t.item_lookback_days, "activity_scores": 1},
        "similarity": {"interactions": s.positives_window_days, "items": s.item_window_days, "user_embeddings": 1,
                       "activity_scores": 1},
        "retrieve": {"items": 1, "activity_scores": 1, "item_similar": 1, "item_positive_users": 1, "user_similar": 1,
                     "user_embeddings": 1},
        "rank": {"interactions": rank_hist, "items": rank_hist + r.item_lookback_days, "users": r.train_window_days + 1,
                 "candidates": 1, "item_similar": r.train_window_days + 1},
        "dispatch": {"ranked": 1, "activity_scores": 1, "items": 1},
        "metrics": {"match_sets": 1, "ranked": 1, "candidates": 1, "activity_scores": 1},
    }


# ---------------------------------------------------------------------- world cache
@dataclass
class World:
    preset: str
    seed: int
    start: dt.date
    days: int
    path: Path  # directory holding lake/ and _world.json

    @property
    def lake(self) -> Path:
        return self.path / "lake"

    @property
    def day(self) -> dt.date:
        """D: the second-to-last synthetic day (D+1 is there for evaluation)."""
        return self.start + dt.timedelta(days=self.days - 2)

    @property
    def meta(self) -> dict:
        return json.loads((self.path / "_world.json").read_text())


def world_for(worlds: Path, preset: str, seed: int, start: dt.date, days: int) -> World:
    return World(preset, seed, start, days, worlds / f"{preset}_seed{seed}_{start.isoformat()}_{days}d")


def ensure_world(w: World) -> World:
    """Synthesise ``w`` unless a complete copy is cached (``_world.json`` marks it complete)."""
    w.path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(w.path) + ".lock"):
        if (w.path / "_world.json").exists():
            return w
        part = w.path.with_name(w.path.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        t0 = time.time()
        print(f"synthesising {w.preset} world: {w.days} days from {w.start}, seed {w.seed} -> {w.path}", flush=True)
        cmd = [sys.executable, "-m", "jobs.cli", "synth", "--lake", str(part / "lake"), "--preset", w.preset,
               "--start", w.start.isoformat(), "--days", str(w.days), "--seed", str(w.seed), "--json"]
        with open(part / "synth.err", "w") as err:
            out = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"synth failed (exit {out.returncode}); see {part / 'synth.err'}")
        summary = json.loads(out.stdout[out.stdout.index("{"):])
        meta = {"preset": w.preset, "seed": w.seed, "start": w.start.isoformat(), "days": w.days,
                "synth_seconds": round(time.time() - t0, 1), "summary": summary}
        (part / "_world.json").write_text(json.dumps(meta, indent=1))
        os.rename(part, w.path)
    return w


def _read_only(root: Path) -> None:
    """Make the cached files read-only: an in-place write through a hard link would fail loudly."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            mode = os.stat(p).st_mode
            if mode & 0o222:
                os.chmod(p, mode & ~0o222 & 0o7777)


def overlay(w: World, run_dir: Path) -> Path:
    """A fresh lake at ``run_dir/lake``: new directories, input files hard-linked from the cache."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    _read_only(w.lake)
    dst = run_dir / "lake"
    try:
        shutil.copytree(w.lake, dst, copy_function=os.link)
    except OSError:  # another filesystem: copy
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(w.lake, dst)
    # small metadata files are rewritten by some runs: give the run its own writable copies
    for p in dst.glob("*.json"):
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data)
    return dst


def snapshot_lake(lake: Path, run_dir: Path) -> Path:
    """A hard-link copy of a warmed-up ``lake`` at ``run_dir/lake``, taken before D runs.

    Why before D: D's lock and log files do not exist yet, so the two copies share no file that
    D's run writes in place (every partition, model and cache entry is published by rename)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dst = run_dir / "lake"
    shutil.copytree(lake, dst, copy_function=os.link, ignore=shutil.ignore_patterns("_locks"))
    for p in dst.glob("*.json"):
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data)
    return dst


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ---------------------------------------------------------------------- measuring a process tree
@dataclass
class Sample:
    t: float
    cpu: float
    rss: int
    by_kind: dict[str, float] = field(default_factory=dict)  # CPU by driver / jvm / workers


def _kind(p: psutil.Process, root_pid: int) -> str:
    """driver (the ``dualrec run`` process), jvm (Spark), workers (Python workers and anything else)."""
    if p.pid == root_pid:
        return "driver"
    try:
        return "jvm" if "java" in p.name() else "workers"
    except psutil.Error:
        return "workers"


@dataclass
class TreeSampler:
    """CPU seconds and RSS of a process and all its descendants, sampled in a thread."""

    pid: int
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _cpu: dict[int, float] = field(default_factory=dict)
    _kinds: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "TreeSampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            rss = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    with p.oneshot():
                        c = p.cpu_times()
                        # own time only: a reaped child's time would show up twice (its last sample
                        # and its parent's children_*); a process living < interval is missed
                        self._cpu[p.pid] = c.user + c.system
                        if self._kinds.get(p.pid, "workers") == "workers":  # spark-class execs java later
                            self._kinds[p.pid] = _kind(p, self.pid)
                        rss += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            by: dict[str, float] = {}
            for pid, c in self._cpu.items():
                k = self._kinds.get(pid, "workers")
                by[k] = by.get(k, 0.0) + c
            self.samples.append(Sample(time.time(), sum(self._cpu.values()), rss, by))
            self._stop.wait(self.interval)

    def window(self, t0: float, t1: float) -> tuple[float, int, dict[str, float]]:
        """(CPU seconds, peak RSS bytes, CPU seconds by process kind) between two wall-clock times."""
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        before = [s for s in self.samples if s.t < t0]
        s0 = before[-1] if before else Sample(t0, 0.0, 0)
        s1 = inside[-1] if inside else s0
        peak = max((s.rss for s in inside), default=0)
        kinds = {k: round(max(v - s0.by_kind.get(k, 0.0), 0.0), 1) for k, v in s1.by_kind.items()}
        return max(s1.cpu - s0.cpu, 0.0), peak, kinds


PROGRESS = re.compile(r"\[([^\]]+)\] (?:stage )?(\d+)/(\d+) (\w+) (\.\.\.|done in)")


def run_day(lake: Path, day: dt.date, log_path: Path, sets: list[str], interval: float,
            from_stage: str | None = None) -> dict:
    """``dualrec run`` for one day in a fresh process; per-stage wall, CPU, peak RSS.

    ``from_stage``: resume a day whose earlier stages are published; those keep their wall time
    from ``_runs/dt=D/stages.json`` and get null CPU/RSS (``"resumed_from": stage`` in the result)."""
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--lake", str(lake), "--date", day.isoformat()]
    if from_stage:
        cmd += ["--from-stage", from_stage]
    for s in sets:
        cmd += ["--set", s]
    load0 = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    marks: dict[str, list[float]] = {}
    with open(log_path, "w", buffering=1) as logf:
        proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        sampler = TreeSampler(proc.pid, interval).start()
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            for m in PROGRESS.finditer(line):
                name, what = m.group(4), m.group(5)
                marks.setdefault(name, [time.time(), time.time()])
                if what == "done in":
                    marks[name][1] = time.time()
                    print(f"  {name} done ({time.time() - t0:.0f} s into the day, load {os.getloadavg()[0]:.1f})",
                          flush=True)
        rc = proc.wait()
        sampler.stop()
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load1 = os.getloadavg()
    if rc != 0:
        lines = open(log_path).readlines()
        tail = "".join(lines[-30:])
        hint = ""
        if any("Answer from Java side is empty" in ln or "Connection refused" in ln for ln in lines):
            hint = ("\nthe Spark JVM died mid-run: on a shared machine usually the kernel OOM killer "
                    "(check `dmesg | grep -i killed`); retry with --set spark.driver_memory=3g or on a quieter machine")
        raise SystemExit(f"dualrec run failed (exit {rc}); log {log_path}:\n{tail}{hint}")
    timings = json.loads((lake / "_runs" / f"dt={day.isoformat()}" / "stages.json").read_text())
    stages = {}
    for name in STAGES:
        if name not in marks:
            if from_stage and name in timings and STAGES.index(name) < STAGES.index(from_stage):
                stages[name] = {"seconds": timings[name], "cpu_seconds": None, "peak_rss_mib": None,
                                "cpu_by_process": {}, "earlier_run": True}
            continue
        cpu, peak, kinds = sampler.window(*marks[name])
        stages[name] = {"seconds": timings.get(name, round(marks[name][1] - marks[name][0], 3)),
                        "cpu_seconds": round(cpu, 1), "peak_rss_mib": round(peak / 2**20), "cpu_by_process": kinds}
    return {
        "wall_seconds": round(wall, 2),
        # getrusage only sees reaped descendants (not the JVM the driver leaves behind): take the larger
        "cpu_seconds": round(max((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
                                 sampler.samples[-1].cpu if sampler.samples else 0.0), 1),
        "peak_rss_mib": round(max((s.rss for s in sampler.samples), default=0) / 2**20),
        "stages": stages,
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
        "command": " ".join(cmd),
        "resumed_from": from_stage,
    }


# ---------------------------------------------------------------------- rows
def partition_rows(lake: Path, table: str, day: dt.date) -> int:
    d = lake / table / f"dt={day.isoformat()}"
    if not d.is_dir():
        return 0
    n = 0
    for f in d.iterdir():
        if f.suffix == ".parquet" or (f.is_file() and not f.name.startswith(("_", "."))):
            try:
                n += pq.ParquetFile(f).metadata.num_rows
            except Exception:  # noqa: BLE001 - not a Parquet data file
                continue
    return n


def rows_of(lake: Path, day: dt.date, cfg: DualRecConfig) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Rows of every table's day-D partition, and rows in/out per stage."""
    tables = sorted({t for ts in OUTPUTS.values() for t in ts} | {"users", "items", "visits", "interactions"})
    rows = {t: partition_rows(lake, t, day) for t in tables}
    per_stage = {}
    for stage, rd in reads(cfg).items():
        rin = 0
        for table, n in rd.items():
            rin += sum(partition_rows(lake, table, day - dt.timedelta(days=k)) for k in range(n))
        per_stage[stage] = {"rows_in": rin, "rows_out": sum(rows[t] for t in OUTPUTS[stage])}
    return rows, per_stage


# ---------------------------------------------------------------------- extras
def _hog(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        for _ in range(100_000):
            x += 1


class CpuHog:
    """One busy-looping process per core, for the contended run."""

    def __init__(self, procs: int, max_seconds: float = 7200):
        self.procs = [mp.Process(target=_hog, args=(time.time() + max_seconds,), daemon=True) for _ in range(procs)]

    def __enter__(self):
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
            p.join()


def evaluate(lake: Path, day: dt.date) -> dict:
    cmd = [sys.executable, "-m", "jobs.cli", "evaluate", "--lake", str(lake), "--date", day.isoformat(), "--json"]
    t0 = time.time()
    out = subprocess.run(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    full = json.loads(out.stdout[out.stdout.index("{"):])
    q = {}
    for path in QUALITY_PATHS:
        v = full
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        q[path] = v
    q["evaluate_seconds"] = round(time.time() - t0, 1)
    return q


def peer_als(lake: Path, day: dt.date, out_json: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peer_als.py"), "--lake", str(lake), "--date", day.isoformat(),
           "--json", str(out_json)]
    t0 = time.time()
    r = subprocess.run(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"peer_als failed:\n{r.stdout[-3000:]}")
    res = json.loads(out_json.read_text())
    return {"process_seconds": round(wall, 1), "als_seconds": res.get("als", {}).get("seconds"), "result": res}


# ---------------------------------------------------------------------- report
def table(result: dict) -> str:
    lines = [f"{'stage':<11} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>8} {'peak RSS':>9} {'rows in':>12} {'rows out':>11} "
             f"{'rows/s':>10}  CPU driver/jvm/workers"]
    for name, s in result["stages"].items():
        r = result["stage_rows"].get(name, {})
        rate = r.get("rows_in", 0) / s["seconds"] if s["seconds"] else 0
        if s.get("earlier_run"):  # resumed day: only the first run's wall time is known
            lines.append(f"{name:<11} {s['seconds']:>8.1f} {'-':>8} {'-':>8} {'-':>10} {r.get('rows_in', 0):>12,} "
                         f"{r.get('rows_out', 0):>11,} {rate:>10,.0f}  (earlier run)")
            continue
        lines.append(f"{name:<11} {s['seconds']:>8.1f} {s['cpu_seconds']:>8.1f} {s['cpu_seconds'] / max(s['seconds'], 1e-9):>8.2f} "
                     f"{s['peak_rss_mib']:>6} MiB {r.get('rows_in', 0):>12,} {r.get('rows_out', 0):>11,} {rate:>10,.0f}  "
                     + "/".join(f"{s['cpu_by_process'].get(k, 0):.0f}" for k in ("driver", "jvm", "workers")))
    lines.append(f"{'total':<11} {result['total_seconds']:>8.1f} {result['cpu_seconds']:>8.1f} "
                 f"{result['cpu_seconds'] / max(result['total_seconds'], 1e-9):>8.2f} {result['peak_rss_mib']:>6} MiB")
    lines.append(f"process wall {result['wall_seconds']:.1f} s (incl. JVM start); load average before "
                 f"{result['loadavg_before']}, after {result['loadavg_after']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--worlds", default="/work/worlds", help="cache of synthetic worlds (outside the repo)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--start", default="2026-01-01")
    ap.add_argument("--days", type=int, default=None, help="synthetic days (default: history of every window + D + D+1)")
    ap.add_argument("--run-dir", default=None, help="where the day runs (default WORLDS/_runs/<preset>)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--peer-als", action="store_true", help="also run benchmarks/peer_als.py on the same lake and day")
    ap.add_argument("--contended", action="store_true", help="also run the day beside a CPU hog; report the slowdown")
    ap.add_argument("--hog-procs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--evaluate", action="store_true", help="also run dualrec evaluate --json (quality figures)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for the run")
    ap.add_argument("--sample", type=float, default=0.5, help="sampling interval of CPU/RSS (s)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--no-fingerprints", action="store_true",
                    help="skip the row fingerprints of the outputs (driver-side read of every table: ~5 s on small)")
    ap.add_argument("--compare", metavar="JSON",
                    help="an earlier --json of the same day: print the first stage whose outputs differ (reruns must agree)")
    ap.add_argument("--warm", action="store_true",
                    help="steady state: run D-1 first (untimed warm-up: models, caches), then time D")
    ap.add_argument("--from-stage", choices=list(STAGES),
                    help="resume the day already in --run-dir (e.g. after a stage failed): run from this stage; "
                    "earlier stages keep the wall times of the first run, without CPU/RSS")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    cfg = DualRecConfig()
    days = args.days or history_days(cfg) + 2
    w = ensure_world(world_for(Path(args.worlds), args.preset, args.seed, dt.date.fromisoformat(args.start), days))
    meta = w.meta
    run_dir = Path(args.run_dir) if args.run_dir else Path(args.worlds) / "_runs" / args.preset
    if args.from_stage:
        if args.warm or args.contended:
            raise SystemExit("--from-stage resumes one timed day: it does not combine with --warm or --contended")
        lake = run_dir / "lake"
        if not (lake / "_runs").is_dir():
            raise SystemExit(f"--from-stage: no earlier run of the day in {lake}")
    else:
        lake = overlay(w, run_dir)
    day = w.day
    print(f"{args.preset}: world {w.path} ({meta['summary'].get('users')} users), day {day}, run in {lake}", flush=True)

    warmup = None
    snapshot = None
    if args.warm:
        warm_day = day - dt.timedelta(days=1)
        print(f"warm-up: {warm_day} (untimed in the totals: it leaves the models and caches a daily run finds)",
              flush=True)
        rw = run_day(lake, warm_day, run_dir / "warmup.log", args.set, args.sample)
        warmup = {"date": warm_day.isoformat(), "stage_seconds": {k: v["seconds"] for k, v in rw["stages"].items()},
                  "total_seconds": round(sum(v["seconds"] for v in rw["stages"].values()), 2)}
        print(f"warm-up done: {warmup['total_seconds']} s of stages", flush=True)
        if args.contended:
            snapshot = snapshot_lake(lake, run_dir.with_name(run_dir.name + "_contended"))

    res = run_day(lake, day, run_dir / ("run.log" if not args.from_stage else f"run_from_{args.from_stage}.log"),
                  args.set, args.sample, args.from_stage)
    rows, stage_rows = rows_of(lake, day, cfg)
    res["stage_rows"] = stage_rows
    res["total_seconds"] = round(sum(s["seconds"] for s in res["stages"].values()), 2)
    print(table(res), flush=True)
    out = {
        "preset": args.preset,
        "users": rows["users"],
        "items": rows["items"],
        "stage_seconds": {k: v["seconds"] for k, v in res["stages"].items()},
        "total_seconds": res["total_seconds"],
        "peak_rss_mib": res["peak_rss_mib"],
        "rows": rows,
        "date": day.isoformat(),
        "world": str(w.path),
        "history_days": days - 2,
        "cpu_seconds": res["cpu_seconds"],
        "wall_seconds": res["wall_seconds"],
        "stages": res["stages"],
        "stage_rows": stage_rows,
        "loadavg_before": res["loadavg_before"],
        "loadavg_after": res["loadavg_after"],
        "overrides": args.set,
        "mode": "warm" if args.warm else "cold",
        "resumed_from": args.from_stage,
        "warmup": warmup,
        # row fingerprints of every published table and artefact: two runs' JSONs name the first stage that differs
        "fingerprints": None if args.no_fingerprints else day_fingerprints(Lake(str(lake)), day, *stage_outputs()),
    }
    if args.compare and out["fingerprints"] is not None:
        other = json.loads(Path(args.compare).read_text()).get("fingerprints")
        diff = first_difference(other, out["fingerprints"]) if other else "no fingerprints in " + args.compare
        out["rerun_difference"] = diff
        print(f"rerun against {args.compare}: {diff or 'identical outputs'}", flush=True)
    if args.evaluate:
        out["quality"] = evaluate(lake, day)
        print("quality:", json.dumps(out["quality"]), flush=True)
    if args.peer_als:
        als = peer_als(lake, day, run_dir / "peer_als.json")
        out["peer_als_seconds"] = als["als_seconds"]
        out["peer_als"] = {k: v for k, v in als.items() if k != "result"}
        out["peer_als"]["recall_new"] = als["result"].get("als_new", {}).get("recall_new")
        print(f"peer ALS: {als['als_seconds']} s fit + recommend ({als['process_seconds']} s process)", flush=True)
    if args.contended:
        lake2 = snapshot if snapshot is not None else overlay(w, run_dir.with_name(run_dir.name + "_contended"))
        print(f"contended run beside {args.hog_procs} busy processes ...", flush=True)
        with CpuHog(args.hog_procs):
            res2 = run_day(lake2, day, run_dir.with_name(run_dir.name + "_contended") / "run.log", args.set, args.sample)
        res2["total_seconds"] = round(sum(s["seconds"] for s in res2["stages"].values()), 2)
        res2["stage_rows"] = stage_rows
        print(table(res2), flush=True)
        out["contended"] = {"stage_seconds": {k: v["seconds"] for k, v in res2["stages"].items()},
                            "total_seconds": res2["total_seconds"], "hog_procs": args.hog_procs,
                            "slowdown": round(res2["total_seconds"] / max(res["total_seconds"], 1e-9), 2),
                            "stage_slowdown": {k: round(v["seconds"] / max(res["stages"][k]["seconds"], 1e-9), 2)
                                               for k, v in res2["stages"].items() if k in res["stages"]},
                            "loadavg_before": res2["loadavg_before"], "loadavg_after": res2["loadavg_after"]}
        print(f"contended slowdown: {out['contended']['slowdown']}x", flush=True)
        if not args.keep:
            shutil.rmtree(lake2, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, sort_keys=True))
    if not args.keep:
        shutil.rmtree(lake, ignore_errors=True)  # run.log stays
    return 0


if __name__ == "__main__":
    sys.exit(main())
