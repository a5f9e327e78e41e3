"""The command line: every registered command is listed and answers --help."""

import subprocess
import sys

import pytest

from perceptsr.cli import COMMANDS, main


def test_help_lists_every_command_with_its_description(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (_module, summary) in COMMANDS.items():
        assert name in out
        assert summary.split(",")[0][:40] in " ".join(out.split())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"perceptsr {name}" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "perceptsr", "--help"], capture_output=True, text=True, check=True)
    assert "commands" in out.stdout
