"""The configuration reference and settings.toml are generated from the schema, and every key of
every section is documented with its own text."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

import config_reference
from config.settings import Settings, load_settings
from tests.conftest import ROOT


def documented_models() -> Iterator[tuple[str, type[BaseModel]]]:
    """Every settings model: the sections, and the models nested in them ([[pruning.steps]])."""
    pending: list[tuple[str, type[BaseModel]]] = [
        (s.name, s.model) for s in config_reference.sections()
    ]
    while pending:
        name, model = pending.pop()
        yield name, model
        for key, field in model.model_fields.items():
            pending += [(f"{name}.{key}", m) for m in config_reference.nested_models(field)]


def test_every_key_of_every_section_has_its_own_description() -> None:
    seen: dict[str, str] = {}
    keys = 0
    for name, model in documented_models():
        assert config_reference.docstring(model), f"[{name}] has no docstring"
        for key, field in model.model_fields.items():
            text = config_reference.description(field)
            assert text, f"{name}.{key} has no description"
            assert text not in seen, f"{name}.{key} carries {seen[text]}'s description"
            seen[text] = f"{name}.{key}"
            keys += 1
    assert keys > 80  # every section walked, nested models included


def test_every_key_has_a_row_in_the_reference() -> None:
    text = config_reference.reference()
    for section in config_reference.sections():
        header = f"[[{section.name}]]" if section.is_array else f"[{section.name}]"
        assert f"**`{header}`**" in text
        block = text.split(f"**`{header}`**", 1)[1].split("\n**`", 1)[0]
        for key, field in section.model.model_fields.items():
            row = f"| `{key}` | "
            assert row in block, f"{header} {key} is missing from the reference"
            meaning = config_reference.cell(config_reference.description(field))
            assert meaning in block.split(row, 1)[1].split("\n")[0]


def test_the_sites_reference_is_the_generated_one() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config_reference.page_with_reference(page), (
        "docs/configuration.md is out of step with the schema: "
        "run `python -m config_reference --write`"
    )


def test_settings_toml_is_the_generated_one_and_loads_to_the_defaults() -> None:
    assert (ROOT / "settings.toml").read_text() == config_reference.settings_toml(), (
        "settings.toml is out of step with the schema: run `python -m config_reference --write`"
    )
    assert load_settings(ROOT / "settings.toml") == load_settings()


def test_the_schema_defaults_are_the_served_defaults() -> None:
    # The GPU device runs two batches at once by default; the two copies once disagreed.
    devices = {d.name: d for d in Settings.model_fields["devices"].default}
    assert devices["gpu-onnxruntime"].parallel_batches == 2
    assert devices["cpu"].parallel_batches == 1 and devices["cpu"].backend == "cpu"
