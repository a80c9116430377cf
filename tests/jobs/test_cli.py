import subprocess
import sys

import pytest

from jobs.cli import COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command):
    out = subprocess.run([sys.executable, "-m", "jobs.cli", *command.split(), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout


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
