"""The console of a job (`maple.console`): the job's own lines on the console, everything the libraries write in the
log file, the warnings that need the user on both, and a stage as one line (no terminal) or a bar (a terminal)."""

from __future__ import annotations

import io
import logging
import os
import sys

from maple.console import Console


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_what_the_libraries_write_goes_to_the_log_and_the_console_keeps_the_jobs_lines(tmp_path):
    screen = io.StringIO()
    streams = sys.stdout, sys.stderr
    with Console(tmp_path / "logs", "job", stream=screen) as console:
        console.line("the job's own line")
        print("a library's print")
        logging.getLogger("ray.data").info("a Ray Data progress block")
        logging.getLogger("mlflow.pyfunc").warning("a warning the user cannot act on")
        print("a library's warning, as Python's warnings module writes it", file=sys.stderr)
        os.write(2, b"a native line on the process's stderr\n")
    assert screen.getvalue() == "the job's own line\n"
    log = (tmp_path / "logs" / "job.log").read_text()
    for text in ("a library's print", "a Ray Data progress block", "a warning the user cannot act on",
                 "a library's warning", "a native line on the process's stderr"):
        assert text in log, text
    assert (sys.stdout, sys.stderr) == streams  # given back as they were


def test_warnings_that_need_the_user_reach_the_console(tmp_path):
    screen = io.StringIO()
    with Console(tmp_path, "job", stream=screen):
        logging.getLogger("maple.stages.mining").warning("maple's own warning")
        logging.getLogger("ray").warning("Warning: The following resource request cannot be scheduled right now: "
                                         "{'GPU': 1.0}")
        logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster.")
        logging.getLogger("maple.stages.mining").info("maple's own info")
    assert screen.getvalue().splitlines() == [
        "warning: maple's own warning",
        "warning: Warning: The following resource request cannot be scheduled right now: {'GPU': 1.0}"]
    assert "Token authentication" in (tmp_path / "job.log").read_text()


def test_without_a_terminal_a_stage_is_one_line_and_each_finished_run_another(tmp_path):
    screen = io.StringIO()
    with Console(tmp_path, "job", stream=screen) as console:
        with console.stage("[1/2] training", total=4) as stage:
            for _ in range(4):
                stage.advance()
            stage.finished("full-s0: 4 steps in 1 s")
        with console.stage("[2/2] evaluating", unit="model") as stage:
            stage.advance(3, total=3)
    lines = screen.getvalue().splitlines()
    assert [line.split("  (")[0] for line in lines] == ["[1/2] training", "      full-s0: 4 steps in 1 s",
                                                        "[2/2] evaluating"]
    assert lines[0].endswith(" s)")  # the time since the job started


def test_on_a_terminal_a_stage_is_a_bar_with_its_elapsed_time_and_eta_then_a_ticked_line(tmp_path):
    screen = Terminal()
    with Console(tmp_path, "job", stream=screen) as console, console.stage("[1/1] training", total=4) as stage:
        stage.advance(2)
        stage.finished("baseline: 4 steps in 1 s")
        stage.advance(2)
    out = screen.getvalue()
    assert "[1/1] training" in out and "2/4" in out and "<" in out  # [elapsed<remaining]
    last = out.rstrip().splitlines()[-2:]  # the ticked stage, then its finished runs
    assert last[0].startswith("[1/1] training  ✓") and last[1] == "      baseline: 4 steps in 1 s"


def test_verbose_leaves_every_stream_and_logger_as_it_was(tmp_path):
    screen = io.StringIO()
    streams, handlers = (sys.stdout, sys.stderr), logging.getLogger().handlers[:]
    with Console(tmp_path / "logs", "job", verbose=True, stream=screen) as console:
        assert (sys.stdout, sys.stderr) == streams and logging.getLogger().handlers == handlers
        console.line("ours")
    assert screen.getvalue() == "ours\n" and not (tmp_path / "logs").exists()


def test_a_failure_leaves_its_traceback_in_the_log_and_says_where_it_is(tmp_path):
    screen = io.StringIO()
    try:
        with Console(tmp_path, "job", stream=screen):
            raise RuntimeError("a bug")
    except RuntimeError:
        pass
    assert "RuntimeError: a bug" in (tmp_path / "job.log").read_text()
    assert screen.getvalue() == f"failed; the libraries' log is {tmp_path / 'job.log'}\n"
