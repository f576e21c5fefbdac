"""`python -m config_reference`: the README's configuration reference, generated from the comments
in settings.toml (tests/test_config_reference.py keeps the README in step with it).

A comment right above a section header describes the section; a comment above keys describes
each of them until a blank line or the next comment.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from config import DEFAULT_SETTINGS_PATH

SECTION = re.compile(r"^\[\[?([a-z_]+)\]\]?\s*$")
KEY = re.compile(r"^(#\s*)?([a-z_]+)\s*=")
START, END = "<!-- settings-reference:start -->", "<!-- settings-reference:end -->"


def render(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": ")) if value is not None else "unset"


def cell(comment: list[str]) -> str:
    return " ".join(comment).replace("|", "\\|")


def reference(path: Path = DEFAULT_SETTINGS_PATH) -> str:
    values = tomllib.loads(path.read_text())
    out: list[str] = []
    comment: list[str] = []
    section = ""
    seen: set[str] = set()
    keys: set[tuple[str, str]] = set()
    after_key = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        is_key = bool(KEY.match(line)) and bool(section)
        if match := SECTION.match(line):
            section = match.group(1)
            if section not in seen:  # a second [[devices]] entry shares the first one's rows
                seen.add(section)
                out += ["", f"**`{line}`** {cell(comment)}".rstrip(), "",
                        "| key | default | meaning |", "|---|---|---|"]  # fmt: skip
            comment = []
        elif not line:
            comment = []
        elif (match := KEY.match(line)) and section:
            key, commented = match.group(2), bool(match.group(1))
            if (section, key) in keys:
                continue
            keys.add((section, key))
            table = values.get(section, {})
            entries = table if isinstance(table, list) else [table]
            shown = " / ".join(render(e.get(key)) for e in entries if key in e or commented)
            default = "unset" if commented else shown or "runtime default"
            out.append(f"| `{key}` | `{default}` | {cell(comment)} |")
        elif line.startswith("#") and section:
            comment = [*([] if after_key else comment), line.lstrip("#").strip()]
        elif line.startswith("#"):
            comment = []  # the file's header
        after_key = is_key
    return "\n".join(out).strip() + "\n"


def main() -> int:
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
