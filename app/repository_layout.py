"""What KServe mounts is not always a repository: its storage initializer fills `/mnt/models`
with whatever the InferenceService's storageUri holds: a repository of models (Triton's layout,
served as it is), one model's folder of version folders (`/mnt/models/1/model.onnx`), or one
model file (`/mnt/models/model.onnx`). The last two are served as the one model `[model] name`
names, through a repository of links made at start-up: nothing else in the server changes."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from config.settings import Settings
from models.artifacts.servable import PLAIN_FILES, model_names, versions_on_disk

log = logging.getLogger(__name__)

Layout = Literal["repository", "model", "file"]


def layout(root: Path) -> Layout:
    """A repository (model folders), one model's folder (version folders), or one model's files.
    Pure but for reading the folder."""
    if not root.is_dir() or model_names(root):
        return "repository"  # (a missing folder is the repository check's to report)
    if versions_on_disk(root):
        return "model"
    if any((root / name).is_file() for name in PLAIN_FILES):
        return "file"
    return "repository"


def as_repository(settings: Settings) -> Settings:
    """`settings` with a repository the server can read, made of links when the configured
    folder holds one model rather than a repository."""
    root = settings.model.repository.resolve()
    found = layout(root)
    if found == "repository":
        return settings
    name = settings.model.name
    links = Path(tempfile.mkdtemp(prefix="recsys-repository-"))
    atexit.register(shutil.rmtree, links, ignore_errors=True)
    if found == "model":
        (links / name).symlink_to(root, target_is_directory=True)
    else:
        (links / name).mkdir()
        (links / name / "1").symlink_to(root, target_is_directory=True)
    log.info("%s holds one model (%s); served as %r", root,
             "version folders" if found == "model" else "a model file, as version 1",
             name)  # fmt: skip
    return settings.model_copy(
        update={"model": settings.model.model_copy(update={"repository": links})}
    )
