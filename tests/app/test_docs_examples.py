"""Every curl and Python client example in the README and the site, run as shown against a live
server on loopback with the default settings: the short test build of the built-in model and the
README's own model (`docs/my_ranker.py`). Where a page prints the answer after a command, the
answer must match it (tests/docs_text.py says how); elsewhere the command must succeed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests import docs_text
from tests.app.servers import running_server
from tests.conftest import MODEL_NAME, ROOT

SHOWN_ADDRESS = "localhost:8000"
PYTHON_C = ".venv/bin/python -c "


@dataclass(frozen=True)
class Example:
    where: str
    language: str  # "bash": one curl command; "python": a whole client script
    code: str
    answer: docs_text.Block | None


def examples() -> Iterator[Example]:
    for page in docs_text.pages():
        blocks = docs_text.blocks(page)
        for i, block in enumerate(blocks):
            answer = docs_text.shown_answer(block, blocks[i + 1] if i + 1 < len(blocks) else None)
            if block.language == "bash":
                curls = [c for c in docs_text.shell_commands(block.body) if c.startswith("curl ")]
                assert not answer or len(curls) == 1, f"{block.where}: one command per answer"
                for command in curls:
                    if SHOWN_ADDRESS in command:
                        yield Example(block.where, "bash", command, answer)
                for command in docs_text.shell_commands(block.body):
                    if command.startswith(PYTHON_C):  # a step of an example, e.g. rows to gate on
                        yield Example(block.where, "bash", command, None)
            elif block.language == "python" and SHOWN_ADDRESS in block.body:
                yield Example(block.where, "python", block.body, answer)


EXAMPLES = list(examples())


def test_the_pages_have_examples_with_answers() -> None:
    answered = [e for e in EXAMPLES if e.answer is not None]
    assert len(EXAMPLES) >= 15 and len(answered) >= 8, (len(EXAMPLES), len(answered))
    assert any(e.language == "python" for e in answered)


@pytest.fixture(scope="module")
def docs_server(built_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("docs-repository")
    (root / MODEL_NAME).symlink_to(built_repository / MODEL_NAME)
    made = subprocess.run(
        [sys.executable, "docs/my_ranker.py", str(root / "my-ranker" / "1" / "model.onnx")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    log = tmp_path_factory.mktemp("docs-server") / "server.log"
    with running_server(root, {}, log, devices=None) as (_, url):
        yield url.removeprefix("http://")


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_example_runs_and_answers_as_shown(
    example: Example, docs_server: str, tmp_path: Path
) -> None:
    code = example.code.replace(SHOWN_ADDRESS, docs_server)
    code = code.replace(PYTHON_C, f"{sys.executable} -c ")
    if example.language == "bash":
        command = ["bash", "-o", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    ran = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, f"{example.where}: exit {ran.returncode}: {ran.stderr[-2000:]}"
    output = ran.stdout.strip()
    if example.code.startswith(PYTHON_C):
        assert list(tmp_path.iterdir()), f"{example.where}: wrote nothing"
    elif example.answer is None:
        assert output and not output.startswith('{"error"'), f"{example.where}: {output[:500]}"
    elif example.answer.language == "json":
        shown = docs_text.parse_shown(example.answer.body)
        problem = docs_text.mismatch(shown, orjson.loads(output))
        assert problem is None, f"{example.where}: {problem}\nanswered: {output[:2000]}"
    else:
        assert output == example.answer.body.strip(), f"{example.where}: answered {output!r}"
