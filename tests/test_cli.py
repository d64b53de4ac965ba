"""The operator's side of the CLI: clear errors, exit codes, partial reruns, progress and logs."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from dualrec.lake import Lake, parse_date
from dualrec.pipeline import day_lock, day_log, run_day, stages_from
from dualrec.progress import Progress
from dualrec.registry import STAGES
from jobs import cli
from jobs.common import EXIT_BAD_INPUT, EXIT_FAILED

DAY = "2026-01-05"


def test_validate_a_missing_lake_is_an_error_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "lake"
    assert cli.main(["validate", "--lake", str(missing)]) == EXIT_BAD_INPUT
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_validate_an_empty_directory_is_not_a_lake(tmp_path, capsys):
    assert cli.main(["validate", "--lake", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "not a lake" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "--date", DAY], ["evaluate", "--date", DAY],
                                     ["backfill", "--start", DAY, "--end", DAY]])
def test_a_mistyped_lake_creates_no_directories(tmp_path, capsys, command):
    typo = tmp_path / "lakee"
    assert cli.main([command[0], "--lake", str(typo), *command[1:]]) == EXIT_BAD_INPUT
    assert not typo.exists(), "the failed command must not create the mistyped lake"
    assert "nothing was created" in capsys.readouterr().err


def test_a_bad_date_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--lake", "x", "--date", "2026-13-40"])
    assert e.value.code == 2


def test_verbose_is_accepted_before_and_after_the_subcommand():
    p = cli.build_parser()
    assert p.parse_args(["-v", "validate", "--lake", "x"]).verbose == 1
    assert p.parse_args(["validate", "--lake", "x", "-v"]).verbose == 1
    assert p.parse_args(["validate", "--lake", "x", "-vv"]).verbose == 2
    assert getattr(p.parse_args(["validate", "--lake", "x"]), "verbose", 0) == 0


def test_help_documents_the_exit_codes(capsys):
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = capsys.readouterr().out
        assert "exit codes" in out and "2  bad input" in out and "1  anything else" in out


def test_run_accepts_stage_and_from_stage():
    p = cli.build_parser()
    a = p.parse_args(["run", "--lake", "x", "--date", DAY, "--stage", "rank", "--stage", "dispatch"])
    assert a.stage == ["rank", "dispatch"]
    a = p.parse_args(["run", "--lake", "x", "--date", DAY, "--from-stage", "retrieve"])
    assert a.from_stage == "retrieve"
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--lake", "x", "--date", DAY, "--stage", "rnak"])
    with pytest.raises(SystemExit):  # mutually exclusive
        p.parse_args(["run", "--lake", "x", "--date", DAY, "--stage", "rank", "--from-stage", "rank"])


def test_stages_from_keeps_day_order():
    assert stages_from() == list(STAGES)
    assert stages_from("rank") == ["rank", "dispatch", "metrics"]
    assert stages_from(only=["metrics", "activity"]) == ["activity", "metrics"]
    with pytest.raises(ValueError, match="unknown stage"):
        stages_from("nope")


def test_an_unexpected_error_prints_a_traceback_and_exits_1(monkeypatch, tmp_path, capsys):
    def boom(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cli, "_cmd_validate", boom)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_fn(parser(), "validate", boom))
    assert cli.main(["validate", "--lake", str(tmp_path)]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug, not bad input" in err


def _with_fn(parser, command, fn):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[command].set_defaults(fn=fn)
    return parser


def test_bad_configuration_is_exit_2(tiny_world, capsys):
    rc = cli.main(["run", "--lake", tiny_world, "--date", DAY, "--set", "dispatch.Q"])
    assert rc == EXIT_BAD_INPUT
    assert "KEY=VALUE" in capsys.readouterr().err


def test_a_locked_day_is_exit_1_without_traceback(tiny_world, capsys):
    lake = Lake(tiny_world)
    with day_lock(lake, parse_date(DAY)):
        rc = cli.main(["run", "--lake", tiny_world, "--date", DAY, "--stage", "activity"])
    err = capsys.readouterr().err
    assert rc == EXIT_FAILED and "already being run" in err and "Traceback" not in err


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    """filelock holds a kernel lock: a SIGKILLed run never blocks the day."""
    lake = Lake(str(tmp_path / "lake"))
    code = (
        "import os, signal, sys; sys.path.insert(0, %r);"
        "from dualrec.lake import Lake, parse_date; from dualrec.pipeline import day_lock;"
        "cm = day_lock(Lake(%r), parse_date(%r)); cm.__enter__(); os.kill(os.getpid(), signal.SIGKILL)"
    ) % (os.getcwd(), lake.root, DAY)
    subprocess.run([sys.executable, "-c", code], check=False)
    with day_lock(lake, parse_date(DAY)):
        pass


def test_day_log_keeps_every_dualrec_line(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with day_log(lake, parse_date(DAY)) as path:
        logging.getLogger("dualrec.stages.activity").info("trained the model")
    logging.getLogger("dualrec.stages.activity").info("after the run")
    text = open(path, encoding="utf-8").read()
    assert path.endswith(f"_logs/dt={DAY}/run.log")
    assert "trained the model" in text and "after the run" not in text


def test_plain_progress_has_stage_counts_and_eta():
    lines: list[str] = []
    p = Progress(say=lines.append)
    p.start_day(DAY, ["a", "b"], expected={"a": 10.0, "b": 20.0})
    p.stage_started(1, "a")
    p.stage_done(1, "a", 9.5)
    p.step("batch", 24, 24)
    p.close()
    assert lines[0] == f"[{DAY}] stage 1/2 a ..."
    assert "stage 1/2 a done in 9.5s" in lines[1] and "~0:20 left" in lines[1]
    assert lines[2].endswith("batch 24/24")


def test_live_progress_on_a_terminal_renders_with_rich():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    p = Progress(stream=out)
    p.start_day(DAY, ["a"], expected={})
    p.stage_started(1, "a")
    p.stage_done(1, "a", 1.0)
    p.close()
    assert "stage 1/1 a done" in out.getvalue()


def test_partial_run_does_not_mark_an_unrun_day_complete(tiny_world):
    from dualrec.config import DualRecConfig
    from dualrec.pipeline import is_day_done, stage_timings

    lake = Lake(tiny_world)
    timings = run_day(lake, DAY, DualRecConfig(), stages=["activity"], progress=lambda m: None)
    assert set(timings) == {"activity"}
    assert not is_day_done(lake, DAY)
    assert set(stage_timings(lake, DAY)) == {"activity"}
    assert os.path.exists(os.path.join(tiny_world, f"_logs/dt={DAY}/run.log"))


@pytest.mark.slow
def test_demo_runs_from_the_cli(tmp_path, capsys, route_config_path):
    """The README's first command: a world, a day, a report (a cut-down demo: six days synthesised, one
    run, with the route tests' small knobs from --config)."""
    lake = tmp_path / "demo"
    rc = cli.main(["demo", "--lake", str(lake), "--days", "6", "--run-days", "1", "--config", route_config_path])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "report:" in out and (lake / "_reports").exists()


def test_light_commands_do_not_load_the_engines():
    """`dualrec --help`, `validate`, `synth` and `config show` must start in well under a second:
    importing the CLI may not pull in PyTorch, XGBoost, FAISS, Spark or scikit-learn."""
    import subprocess
    import sys

    code = ("import sys, jobs.cli; heavy = [m for m in ('torch', 'xgboost', 'faiss', 'pyspark', 'sklearn') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"jobs.cli imports {out} at start-up"
