"""A model's config.toml: version policies, and its mistakes as one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.artifacts.model_config import ModelConfig, VersionPolicy, read_model_config
from models.artifacts.repository import RepositoryError


def test_version_policies_select_from_what_is_on_disk() -> None:
    on_disk = [1, 2, 5, 3]
    assert VersionPolicy().select(on_disk) == [5]
    assert VersionPolicy(latest=2).select(on_disk) == [5, 3]
    assert VersionPolicy(all=True).select(on_disk) == [5, 3, 2, 1]
    assert VersionPolicy(specific=(2, 4)).select(on_disk) == [2]
    with pytest.raises(ValueError, match="one of latest, all or specific"):
        VersionPolicy(latest=1, all=True)


def test_no_file_is_every_default(tmp_path: Path) -> None:
    assert read_model_config(tmp_path) == ModelConfig()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("max_batch_size = 8\n", "max_batch_size: unknown key"),
        ("max_batch_rows = -1\n", "max_batch_rows: Input should be greater than or equal to 0"),
        ("[version_policy]\nlatest = 1\nall = true\n", "give one of latest, all or specific"),
        ("max_batch_rows = [\n", "not valid TOML"),
        ("[inputs.ids]\nshape = [3]\n", "inputs.ids.dims: Field required; inputs.ids.shape"),
    ],
)
def test_mistakes_are_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(RepositoryError) as caught:
        read_model_config(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'config.toml'}: ") and "\n" not in message
    assert problem in message
