"""What `make up` prints: the commands work in a fresh clone, in the order printed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

from infra.local.__main__ import EXPORTED, instructions


def printed_commands() -> list[list[str]]:
    stack = SimpleNamespace(
        env=lambda extra: {name: f"<{name}>" for name in EXPORTED},
        resources=SimpleNamespace(queue_url="http://127.0.0.1:1/queue"),
        database_url="postgresql://u@127.0.0.1:1/db", logs=Path(".local/logs"))
    lines = [line.removeprefix("#").strip() for line in instructions(stack).splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(".venv/bin/python -m")]


def test_every_file_a_printed_command_reads_is_made_by_an_earlier_one():
    made: list[str] = []
    for command in printed_commands():
        if command[2:4] == ["producer", "generate"]:
            made.append(command[command.index("--out") + 1])
            continue
        for word in command:
            if re.search(r"\.csv$", word):
                assert any(word.startswith(folder + "/") for folder in made), (
                    f"{' '.join(command)} reads {word}, which no earlier command makes")
    assert made
