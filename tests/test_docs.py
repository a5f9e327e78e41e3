"""Doc-test runner for shell commands: every ``perceptsr ...`` line in README.md and docs/*.md must
name a real subcommand whose options parse, and every config or script it names must exist, so the
docs cannot rot silently. (The commands themselves run in the end-to-end tests.)"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from perceptsr.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)


def _commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text(encoding="utf-8")):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                if "perceptsr " in line and not line.startswith(("pip ", "git ")):
                    found.append((doc.name, line))
    return found


COMMAND_LINES = _commands()


def test_docs_have_commands():
    assert len(COMMAND_LINES) >= 10
    assert {doc for doc, _ in COMMAND_LINES} >= {"README.md"}


@pytest.mark.parametrize("doc,line", COMMAND_LINES, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMAND_LINES)])
def test_documented_command_parses(doc, line):
    tokens = shlex.split(line)
    start = next(i for i, t in enumerate(tokens) if t == "perceptsr" or t.endswith("/perceptsr"))
    args = tokens[start + 1:]
    assert args and args[0] in COMMANDS, f"{doc}: unknown command in {line!r}"
    module = importlib.import_module(f"perceptsr.cli.{COMMANDS[args[0]][0]}")
    parser = argparse.ArgumentParser(prog=f"perceptsr {args[0]}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        parser.parse_args(args[1:])
    except SystemExit as exc:  # argparse exits on errors even with exit_on_error=False for some
        pytest.fail(f"{doc}: {line!r} does not parse (exit {exc.code})")
    for token in tokens:
        if token.startswith(("configs/", "benchmarks/")):
            assert (ROOT / token).exists(), f"{doc}: {line!r} names a missing file {token}"
