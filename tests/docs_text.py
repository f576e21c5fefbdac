"""Reading the README and the site's pages for the tests that run what they show: fenced blocks,
shell commands, `python -m` invocations, and the answers the pages print after a command."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import ROOT

ANY = "…"  # in a shown answer: any value here (what depends on the build, such as scores)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
PYTHON_M = re.compile(r"(?:^|[\s;&(])(?:\S*/)?python3?\s+-m\s+([\w.]+)(.*)")
PROJECT_MODULES = ("app", "models", "bench", "config_reference", "scheduler")


def pages() -> list[Path]:
    """The README and every page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # where its body starts, 1-based
    language: str
    body: str
    end: int  # offset in the page just past the closing fence

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start()) + 2, m.group(1), m.group(2), m.end())
        for m in FENCE.finditer(text)
    ]


def shown_answer(block: Block, following: Block | None) -> Block | None:
    """The block printed right after `block` (a ```json or ```text block starting within two
    lines of it): what its command answers."""
    if following is None or following.language not in ("json", "text"):
        return None
    between = block.page.read_text()[block.end : following.end].split("```", 1)[0]
    return following if between.count("\n") <= 2 else None


def split_outside_quotes(text: str, separators: tuple[str, ...], comments: bool = False,
                         ) -> list[str]:  # fmt: skip
    """`text` cut at each separator that is not inside quotes, parts stripped, empty ones
    dropped; with `comments`, a `#` starting a word (outside quotes) drops the rest of its line."""
    parts: list[str] = []
    current, quote, i = "", None, 0
    while i < len(text):
        char = text[i]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif comments and char == "#" and (not current or current[-1].isspace()):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            separator = next((s for s in separators if text.startswith(s, i)), None)
            if separator is not None:
                parts.append(current)
                current, i = "", i + len(separator)
                continue
        current += char
        i += 1
    return [p.strip() for p in (*parts, current) if p.strip()]


def shell_commands(body: str) -> list[str]:
    """A shell block's commands: one per line outside quotes (a quoted body may span lines; a
    backslash continues a line), comments and blank lines dropped."""
    commands = split_outside_quotes(body.replace("\\\n", ""), ("\n",), comments=True)
    return [" ".join(c.split()) if "'" not in c and '"' not in c else c for c in commands]


def command_parts(command: str) -> list[str]:
    """`a && b || c; d` -> its commands, split outside quotes (a pipeline stays whole)."""
    return split_outside_quotes(command, ("&&", "||", ";"))


def python_m_invocations() -> Iterator[tuple[str, str, list[str]]]:
    """Every `python -m <this project's module> ...` in shell blocks and inline code spans, as
    (where, module, arguments)."""
    for page in pages():
        text = page.read_text()
        for block in blocks(page):
            if block.language in ("bash", "sh", "console"):
                for command in shell_commands(block.body):
                    for part in command_parts(command):
                        yield from invocation(block.where, part)
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for number, line in enumerate(prose.splitlines(), 1):
            for span in re.findall(r"`([^`]+)`", line):
                for where, module, shown in invocation(f"{page.relative_to(ROOT)}:{number}", span):
                    # Prose naming a command (`python -m models accelerate`) rather than showing
                    # one to run: the name must exist, so its --help must answer.
                    named = len(shown) <= 1 and not any(a.startswith("-") for a in shown)
                    yield where, module, [*shown, "--help"] if named else shown


def invocation(where: str, text: str) -> Iterator[tuple[str, str, list[str]]]:
    match = PYTHON_M.search(text)
    if match and match.group(1).split(".")[0] in PROJECT_MODULES:
        rest = re.split(r"\s[>]|\s2>", match.group(2))[0]
        yield where, match.group(1), shlex.split(rest)


def parse_shown(text: str) -> Any:
    """A shown JSON answer, its numbers as Decimal so that their shown precision is known."""
    import json

    return json.loads(text, parse_float=Decimal)


def mismatch(shown: Any, actual: Any, path: str = "$") -> str | None:
    """Why `actual` (parsed JSON) is not what `shown` shows, or None: the same keys, lengths,
    strings and booleans; numbers equal to the digits shown; `…` stands for any value."""
    if shown == ANY:
        return None
    if isinstance(shown, dict):
        return dict_mismatch(shown, actual, path)
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(shown) != len(actual):
            return f"{path}: {len(shown)} items shown, answered {orjson.dumps(actual)[:200]!r}"
        problems = (
            mismatch(s, a, f"{path}[{i}]")
            for i, (s, a) in enumerate(zip(shown, actual, strict=True))
        )
        return next((p for p in problems if p), None)
    if isinstance(shown, Decimal) or (isinstance(shown, int) and not isinstance(shown, bool)):
        return (
            None
            if same_to_digits_shown(shown, actual)
            else f"{path}: {shown} shown, {actual!r} answered"
        )
    return None if shown == actual else f"{path}: {shown!r} shown, {actual!r} answered"


def dict_mismatch(shown: dict[str, Any], actual: Any, path: str) -> str | None:
    if not isinstance(actual, dict) or set(shown) != set(actual):
        got = sorted(actual) if isinstance(actual, dict) else actual
        return f"{path}: keys {sorted(shown)} shown, {got} answered"
    problems = (mismatch(value, actual[key], f"{path}.{key}") for key, value in shown.items())
    return next((p for p in problems if p), None)


def same_to_digits_shown(shown: Decimal | int, actual: Any) -> bool:
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        return False
    exponent = shown.as_tuple().exponent if isinstance(shown, Decimal) else 0
    assert isinstance(exponent, int)
    half_a_digit = Decimal(5) * Decimal(10) ** (exponent - 1)
    return abs(Decimal(repr(actual)) - Decimal(shown)) <= half_a_digit
