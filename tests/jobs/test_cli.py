import subprocess
import sys

import pytest

from jobs.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys, monkeypatch):
    """In this process: a subprocess per command imports torch and the job's libraries a dozen times (over two
    minutes on 2 cores). The console script's own process is run by the tests below."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI renames the program for the job's --help
    with pytest.raises(SystemExit) as exited:
        main([*command.split(), "--help"])
    assert exited.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--config" in out and f"maple {command}" in out, out


def test_job_module_and_cli_take_the_same_arguments():
    out = subprocess.run([sys.executable, "-m", "jobs.synth", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--config" in out.stdout


def test_config_error_exits_with_the_key_named():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "data", "synth", "world.n_trian=5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "world.n_trian" in out.stderr


def test_unknown_command_is_an_error():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "fly"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "unknown command" in out.stderr


def test_a_setup_error_is_one_line_naming_the_fix_and_exit_code_2(capsys):
    """In process (the check runs before Ray starts): a port in use for `maple serve`."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            main(["serve", f"serve.port={port}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        (f"maple serve: serve.port={port} is in use on 127.0.0.1 (another server, or an earlier `maple serve` still "
         f"running); stop it or choose another port, e.g. serve.port={port + 1}")]


def test_the_demo_with_a_missing_judge_model_stops_before_any_stage_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--config", "configs/demo_tiny.yaml", f"run.output_dir={tmp_path}", "--judge", "hf",
              "--judge-model", str(tmp_path / "no-such-judge")])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [(f"maple demo: judge.model={tmp_path / 'no-such-judge'}: no such folder; fix "
                                          "the path or download the checkpoint")]
    assert "[1/" not in captured.out and not (tmp_path / "world").exists()  # no stage started
