"""The README and the site as a user reads them: short enough to read, every `python -m` line
parses with the arguments shown, and every other command shown is run by a test or listed, in
one place, as one the tests do not run. (The site itself is built with --strict by scripts/test;
the curl and tritonclient examples run against a live server in tests/app/test_docs_examples.py.)"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from unittest import mock

import pytest

from tests import docs_text
from tests.conftest import ROOT

README_MAX_LINES = 250

# Programs the pages' shell blocks start, and the test that runs each as shown.
RUN_BY = {
    "curl": "tests/app/test_docs_examples.py, against a live server",
    "python -m": "tests/test_docs.py parses the arguments; the tests run the commands themselves",
    "scripts/test": ".ci/run (CI is this command)",
    "scripts/setup": "scripts/test runs it",
    "mkdocs": "scripts/test builds the site with --strict",
    "redis-server": "tests/app/test_features_redis.py starts one per test module",
    "locust": "tests/app/test_locust.py runs the locustfile headless",
    "mkdir -p model_repository/": "a folder, as the live examples' repository is laid out",
    "cp /path/to/your/model.onnx": "the live examples serve the model copied there",
    "python -c": "tests/app/test_docs_examples.py runs it in an empty folder",
    "python docs/my_ranker.py": "tests/app/test_docs_examples.py makes the example model with it",
}


class Parsed(Exception):
    """Raised in place of running a command once its arguments have parsed."""


def test_the_readme_fits_a_few_screens() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_the_first_screen_says_how_to_serve_your_own_model() -> None:
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:45])
    assert "scripts/run" in first_screen and "scripts/test" in first_screen
    assert "model_repository/" in first_screen and "model.onnx" in first_screen


# Each distinct command once, where it is first shown.
INVOCATIONS = list(
    {
        (m, tuple(a)): (w, m, a) for w, m, a in reversed(list(docs_text.python_m_invocations()))
    }.values()
)


def test_the_pages_show_python_m_commands() -> None:
    modules = {module for _, module, _ in INVOCATIONS}
    assert {"app", "models", "bench", "bench.ledger", "config_reference"} <= modules


@pytest.mark.parametrize(
    ("where", "module", "arguments"),
    [pytest.param(*i, id=f"{i[0]} {i[1]} {' '.join(i[2])}"[:120]) for i in INVOCATIONS],
)
def test_python_m_command_parses_as_shown(where: str, module: str, arguments: list[str]) -> None:
    name = module if module in ("config_reference",) or "." in module else f"{module}.__main__"
    main = importlib.import_module(name).main
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser: argparse.ArgumentParser, args: list[str] | None = None) -> None:
        raise Parsed(original(parser, args))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        try:
            if inspect.signature(main).parameters:
                main(arguments)
            else:
                with mock.patch.object(sys, "argv", [module, *arguments]):
                    main()
        except Parsed:
            return
        except SystemExit as exc:
            if exc.code == 0 and arguments[-1:] == ["--help"]:
                return  # a command named in prose: it exists
            pytest.fail(f"{where}: `python -m {module} {' '.join(arguments)}` exits {exc.code}")
    pytest.fail(f"{where}: `python -m {module}` returned without parsing its arguments")


def not_run_list() -> set[str]:
    """The one place the pages list commands the tests do not run: docs/development.md."""
    page = (ROOT / "docs" / "development.md").read_text()
    section = page.split("## Commands the tests do not run", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


def test_every_shell_command_shown_is_run_by_a_test_or_listed_as_not_run() -> None:
    not_run = not_run_list()
    assert 0 < len(not_run) <= 8, f"the not-run list should stay short: {sorted(not_run)}"
    unaccounted = []
    for page in docs_text.pages():
        for block in docs_text.blocks(page):
            if block.language not in ("bash", "sh"):
                continue
            for command in docs_text.shell_commands(block.body):
                # a && b; c: each is a command (a pipeline belongs to its first program)
                for part in docs_text.command_parts(command):
                    shown = re.sub(r"^(\w+=\S+\s+)*(\.venv/bin/)?", "", part.strip())
                    if not shown or docs_text.PYTHON_M.search(part):
                        continue
                    if not any(shown.startswith(key) for key in (*RUN_BY, *not_run)):
                        unaccounted.append(f"{block.where}: {part.strip()}")
    assert not unaccounted, "commands neither run by a test nor listed:\n" + "\n".join(unaccounted)


def test_a_shown_answer_matches_to_the_digits_shown_and_no_further() -> None:
    shown = docs_text.parse_shown('{"a": [0.3667, "…"], "b": "x", "n": 3}')
    assert docs_text.mismatch(shown, {"a": [0.36669, 9], "b": "x", "n": 3}) is None
    assert "$.a[0]" in (docs_text.mismatch(shown, {"a": [0.3668, 9], "b": "x", "n": 3}) or "")
    assert "keys" in (docs_text.mismatch(shown, {"a": [0.3667, 9], "b": "x"}) or "")
    assert "2 items" in (docs_text.mismatch(shown, {"a": [0.3667], "b": "x", "n": 3}) or "")
    assert docs_text.mismatch(shown, {"a": [0.3667, 1], "b": "y", "n": 3}) is not None
    assert docs_text.mismatch(shown, {"a": [0.3667, 1], "b": "x", "n": True}) is not None
