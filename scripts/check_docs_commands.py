"""Every `starfish …` command written in the docs names a real sub-command and only options it has.

Reads the fenced (```) and indented code blocks of the Markdown files given, joins `\\` continuations, and checks
each line that starts with `starfish` against the real command tree (`starfish_cli.app`). Exit 1 listing each
mismatch with its file and line. Placeholders in CAPITALS (CKPT, OUT) are fine: only the command and the option
names are checked here; scripts/check_docs.sh runs the commands.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

# This checkout's command line, whatever the venv's install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from starfish_cli import app  # noqa: E402


def command_lines(path: Path) -> Iterator[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced, pending, start = False, "", 0
    for number, raw in enumerate(lines, start=1):
        if raw.strip().startswith("```"):
            fenced = not fenced
            continue
        indented = raw.startswith("    ") and not fenced
        if not (fenced or indented):
            continue
        text = raw.strip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text, pending = pending + text, ""
        text = text.split(" #", 1)[0].strip()
        for part in re.split(r"\s*(?:&&|;|\|)\s*", text):
            if part.startswith("starfish "):
                yield start, part


def _sub(group: object, name: str) -> object | None:
    """The sub-command `name` of a group (asked through click's API: some groups load their commands lazily)."""
    if not hasattr(group, "get_command"):
        return None
    return group.get_command(typer.Context(group), name)  # type: ignore[arg-type]


def check(path: Path, root: object) -> list[str]:
    problems = []
    for number, line in command_lines(path):
        try:
            words = shlex.split(line.split(">", 1)[0])[1:]
        except ValueError as exc:
            problems.append(f"{path}:{number}: cannot parse {line!r}: {exc}")
            continue
        command = root
        while words and _sub(command, words[0]) is not None:
            command = _sub(command, words.pop(0))
        if hasattr(command, "list_commands"):
            if words and not words[0].startswith("-") and getattr(command, "name", "") == "bench":
                command = command.commands["run"]  # `starfish bench BUNDLE` is `starfish bench run BUNDLE`
            else:
                problems.append(f"{path}:{number}: {line!r}: no such sub-command")
                continue
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}  # type: ignore[attr-defined]
        extra_ok = bool(getattr(command, "context_settings", {}).get("ignore_unknown_options"))
        for word in words:
            name = word.split("=", 1)[0]
            if name.startswith("-") and name not in known and not (extra_ok and "." in name):
                problems.append(f"{path}:{number}: {line!r}: {name} is not an option of this command")
    return problems


def main(paths: list[str]) -> int:
    root = typer.main.get_command(app)
    problems = [p for name in paths for p in check(Path(name), root)]
    for problem in problems:
        print(problem)
    count = sum(1 for name in paths for _ in command_lines(Path(name)))
    print(f"check_docs_commands: {count} starfish command lines in {len(paths)} files, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
