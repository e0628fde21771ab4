"""The README's fenced blocks, for the tests that run them as written. One mechanism for every README test:
``blocks(section)`` gives a section's blocks, ``block(first_line)`` one block, ``commands`` a bash block's
commands. Which test runs which block: ``tests/test_readme.py`` (its ``RUN_ELSEWHERE`` names the sections
another module runs whole, each of which checks that it runs every block of its section)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def sections() -> dict[str, str]:
    """``{heading: text}`` of the README's ``## `` sections (``""``: the text before the first)."""
    parts = re.split(r"^## (.+)\n", README.read_text(), flags=re.M)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


def blocks(section: str | None = None) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of the README (of the ``## section`` only, if given);
    an output block has the language ``""``."""
    text = README.read_text() if section is None else sections()[section]
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def block(first_line: str, language: str | None = None, section: str | None = None) -> str:
    """The one block whose first line starts with ``first_line``."""
    found = [t for lang, t in blocks(section) if t.startswith(first_line) and language in (None, lang)]
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
