"""The README's fenced blocks, for the tests that run them as written (tests/test_readme*.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(section: str | None = None) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of the README (of the ``## section`` only, if given);
    an output block has the language ``""``."""
    text = README.read_text()
    if section is not None:
        start = text.index(f"## {section}")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end > 0 else len(text)]
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def block(first_line: str, language: str | None = None) -> str:
    """The one block whose first line starts with ``first_line``."""
    found = [t for lang, t in blocks() if t.startswith(first_line) and language in (None, lang)]
    assert len(found) == 1, f"{len(found)} README blocks start with {first_line!r}"
    return found[0]


def commands(text: str) -> list[tuple[str, list[str]]]:
    """The commands of a bash block as ``(line as written, argv)``: ``\\``-continued lines and quoted
    strings that span lines are joined, ``#`` comments dropped, comment-only lines skipped."""
    out, pending = [], ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1]
            continue
        try:
            lexer = shlex.shlex(pending, posix=True, punctuation_chars=False)
            lexer.whitespace_split, lexer.commenters = True, "#"
            argv = list(lexer)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if argv:
            out.append((pending.strip(), argv))
        pending = ""
    assert not pending.strip(), f"an unfinished command: {pending!r}"
    return out
