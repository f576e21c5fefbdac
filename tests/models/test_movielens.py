from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models import movielens


def test_files_verify_and_counts_match_the_dataset(
    movielens_dir: Path, raw_movielens: movielens.MovieLens
) -> None:
    assert movielens.verify_folder(movielens_dir) is None
    assert len(raw_movielens.ratings) == 100_000
    assert len(raw_movielens.users) == 943
    assert len(raw_movielens.items) == 1682
    assert len(np.unique(raw_movielens.user_ids)) == 943
    assert set(np.unique(raw_movielens.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # rating >= 4 is a positive: about 55% of rows.
    assert raw_movielens.labels.mean() == pytest.approx(0.5537, abs=1e-3)


def test_side_information_is_parsed(raw_movielens: movielens.MovieLens) -> None:
    assert raw_movielens.users["1"] == movielens.User(24, "M", "technician", "85711")
    toy_story = raw_movielens.items["1"]
    assert toy_story.release_year == 1995
    assert toy_story.genres == ("Animation", "Children's", "Comedy")
    assert sum(item.release_year is None for item in raw_movielens.items.values()) >= 1


def test_a_corrupt_file_is_refused(movielens_dir: Path, tmp_path: Path) -> None:
    for name in movielens.FILES_SHA256:
        shutil.copy(movielens_dir / name, tmp_path / name)
    with (tmp_path / "ml-100k.inter").open("a") as f:
        f.write("1\t1\t5\t0\n")
    problem = movielens.verify_folder(tmp_path)
    assert problem is not None and "ml-100k.inter has SHA-256" in problem


def test_no_source_gives_an_error_naming_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(movielens.DatasetUnavailableError) as error:
        movielens.locate(tmp_path / "nowhere", tmp_path / "cache", allow_download=False)
    message = str(error.value)
    assert "the given path" in message and "the cache" in message and "PyPI" in message


def test_a_verified_explicit_path_wins_over_the_cache(movielens_dir: Path, tmp_path: Path) -> None:
    assert movielens.locate(movielens_dir, tmp_path, allow_download=False) == movielens_dir
