"""The README's configuration reference is the one generated from settings.toml's comments."""

from __future__ import annotations

from config_reference import END, START, reference
from tests.conftest import ROOT


def test_readme_configuration_reference_matches_settings_toml() -> None:
    readme = (ROOT / "README.md").read_text()
    assert START in readme and END in readme, "the README lost its reference markers"
    block = readme.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == reference().strip(), (
        "README.md is out of step with settings.toml: paste `python -m config_reference` "
        "between the settings-reference markers"
    )


def test_every_settings_key_is_in_the_reference() -> None:
    text = reference()
    for key in ("max_queue_delay_ms", "overload_status", "agent_check_port", "movielens_path"):
        assert f"| `{key}` |" in text
