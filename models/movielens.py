"""MovieLens-100K: find the raw files, verify them, parse them.

Sources, in order: an explicit folder (settings or command line), the local cache, and finally the
PyPI wheel `recbole==1.2.1`, which ships the dataset as RecBole atomic files.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.artifacts.checksum import sha256_file

log = logging.getLogger(__name__)

FILES_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
WHEEL_REQUIREMENT = "recbole==1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
CACHE_SUBDIR = "ml-100k"


class DatasetUnavailableError(RuntimeError):
    """No verified copy could be found or fetched; the message lists what was tried."""


@dataclass(frozen=True, slots=True)
class User:
    age: int
    gender: str
    occupation: str
    zip_code: str


@dataclass(frozen=True, slots=True)
class Item:
    title: str
    release_year: int | None
    genres: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MovieLens:
    """Raw ratings and side information, ids kept as the strings the files use."""

    user_ids: npt.NDArray[np.str_]
    item_ids: npt.NDArray[np.str_]
    ratings: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.int64]
    users: dict[str, User]
    items: dict[str, Item]
    source: str

    @property
    def labels(self) -> npt.NDArray[np.float32]:
        """The CTR label: rating >= 4 is a positive."""
        return (self.ratings >= 4).astype(np.float32)


def verify_folder(folder: Path) -> str | None:
    """None if every file is there with the expected checksum, else what is wrong."""
    for name, expected in FILES_SHA256.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        actual = sha256_file(path)
        if actual != expected:
            return f"{path} has SHA-256 {actual}, expected {expected}"
    return None


def fetch_from_pypi(destination: Path) -> None:
    """Download the recbole wheel with pip and extract the ml-100k files, verified."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        command += ["--dest", tmp, WHEEL_REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise OSError(
                f"pip download {WHEEL_REQUIREMENT} failed: {result.stderr.strip()[-400:]}"
            )
        staging = Path(tmp) / "extracted"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in FILES_SHA256:
                (staging / name).write_bytes(wheel.read(WHEEL_FOLDER + name))
        problem = verify_folder(staging)
        if problem:
            raise OSError(f"the files in {wheels[0].name} do not verify: {problem}")
        destination.mkdir(parents=True, exist_ok=True)
        for name in FILES_SHA256:
            (staging / name).replace(destination / name)


def locate(explicit: Path | None, cache_dir: Path, allow_download: bool = True) -> Path:
    """A folder holding verified MovieLens-100K files, fetched into the cache if needed."""
    tried: list[str] = []
    if explicit is not None:
        problem = verify_folder(explicit)
        if problem is None:
            return explicit
        tried.append(f"the given path: {problem}")
    cached = cache_dir / CACHE_SUBDIR
    problem = verify_folder(cached)
    if problem is None:
        return cached
    tried.append(f"the cache: {problem}")
    if allow_download:
        try:
            log.info("fetching MovieLens-100K from PyPI (%s)", WHEEL_REQUIREMENT)
            fetch_from_pypi(cached)
            return cached
        except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError) as exc:
            tried.append(f"PyPI wheel {WHEEL_REQUIREMENT}: {exc}")
    else:
        tried.append("PyPI: download disabled")
    raise DatasetUnavailableError("MovieLens-100K not available. Tried " + "; ".join(tried))


def _rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [line.split("\t") for line in lines[1:] if line]


def _year(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def parse(folder: Path) -> MovieLens:
    inter = _rows(folder / "ml-100k.inter")
    users = {
        row[0]: User(age=int(row[1]), gender=row[2], occupation=row[3], zip_code=row[4])
        for row in _rows(folder / "ml-100k.user")
    }
    items = {
        row[0]: Item(title=row[1], release_year=_year(row[2]), genres=tuple(row[3].split()))
        for row in _rows(folder / "ml-100k.item")
    }
    return MovieLens(
        user_ids=np.array([r[0] for r in inter]),
        item_ids=np.array([r[1] for r in inter]),
        ratings=np.array([float(r[2]) for r in inter], dtype=np.float32),
        timestamps=np.array([int(float(r[3])) for r in inter], dtype=np.int64),
        users=users,
        items=items,
        source=str(folder),
    )


def load(explicit: Path | None, cache_dir: Path, allow_download: bool = True) -> MovieLens:
    return parse(locate(explicit, cache_dir, allow_download))
