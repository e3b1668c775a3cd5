"""The shell examples of README.md, as commands a test can run.

A command is one logical shell command of an ```sh or ```bash block: lines joined by backslash
continuations and by quoted arguments that span lines (`grpcurl -d '{...}'`). Comment lines
right after a command are the output the README shows for it; comment lines after a blank line
(or at the start of a block) describe what follows and belong to no command.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell"})
# Fences that hold commands in a form the parser does not read (prompts, output without `#`).
UNREAD_LANGUAGES = frozenset({"console", "shell-session", "zsh", "fish", "ps1"})
_FENCE = re.compile(r"^```\s*([\w+-]*)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# A note on shown output, set off by two or more spaces: `line            (what it means)`.
_ANNOTATION = re.compile(r"\s{2,}\(.*\)\s*$")


@dataclass(frozen=True)
class Command:
    text: str  # as the README writes it, its lines joined by newlines
    line: int  # the README line it starts on, 1-based
    output: tuple[str, ...] = ()  # the comment lines right after it, without their `#`

    @property
    def words(self) -> list[str]:
        """The words as the shell splits them, inline comments dropped (no expansion)."""
        return shlex.split(self.text.replace("\\\n", " "), comments=True)

    @property
    def assignments(self) -> dict[str, str]:
        """The `NAME=value` words before the program."""
        found: dict[str, str] = {}
        for word in self.words:
            if not _ASSIGNMENT.match(word):
                break
            name, _, value = word.partition("=")
            found[name] = value
        return found

    @property
    def argv(self) -> list[str]:
        """The program and its arguments, after the assignments."""
        return self.words[len(self.assignments) :]

    @property
    def key(self) -> str:
        """The words joined by single spaces: how an allow-list names a command."""
        return " ".join(self.words)

    @property
    def shown(self) -> list[str]:
        """The output lines the README shows, each without its trailing `(note)`."""
        return [_ANNOTATION.sub("", line) for line in self.output]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.key}"


@dataclass
class _Pending:
    lines: list[str]
    start: int
    output: list[str] = field(default_factory=list)


def _complete(lines: list[str]) -> bool:
    text = "\n".join(lines)
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the argument goes on on the next line
        return False
    return True


def _uncomment(line: str) -> str:
    text = line.strip()[1:]
    return text[1:] if text.startswith(" ") else text


def shell_blocks(markdown: str) -> list[tuple[int, str, list[str]]]:
    """Every fenced block: (line of its first content line, language, lines)."""
    blocks: list[tuple[int, str, list[str]]] = []
    inside: tuple[int, str, list[str]] | None = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = _FENCE.match(line)
        if inside is None:
            if fence:
                inside = (number + 1, fence.group(1).lower(), [])
        elif fence and line.strip() == "```":
            blocks.append(inside)
            inside = None
        else:
            inside[2].append(line)
    if inside is not None:
        raise ValueError(f"README.md:{inside[0] - 1}: a code block is never closed")
    return blocks


def commands(markdown: str) -> list[Command]:
    """The commands of every shell block, in README order."""
    found: list[Command] = []
    for start, language, lines in shell_blocks(markdown):
        if language in UNREAD_LANGUAGES:
            raise ValueError(
                f"README.md:{start - 1}: a ```{language} block: write commands as ```sh, with output as # lines"
            )
        if language in SHELL_LANGUAGES:
            found += _block_commands(start, lines)
    return found


def _block_commands(start: int, lines: list[str]) -> list[Command]:
    done: list[_Pending] = []
    pending: _Pending | None = None
    for number, line in enumerate(lines, start=start):
        if pending is not None and not _complete(pending.lines):
            pending.lines.append(line)
            continue
        stripped = line.strip()
        if not stripped:
            pending = None  # a blank line ends the shown output
        elif stripped.startswith("#"):
            if pending is not None:
                pending.output.append(_uncomment(line))
        else:
            pending = _Pending([line], number)
            done.append(pending)
    if pending is not None and not _complete(pending.lines):
        raise ValueError(f"README.md:{pending.start}: the command never ends (an open quote or a trailing \\)")
    return [Command("\n".join(p.lines), p.start, tuple(p.output)) for p in done]


def readme_commands(path: Path) -> list[Command]:
    return commands(path.read_text(encoding="utf-8"))
