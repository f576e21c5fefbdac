"""Settings: each part of the system owns its section's model (`app.settings`,
`scheduler.settings`, `models.settings`); `config.settings` assembles them into one typed
`Settings` and loads it. The base class lives here so that a part's settings import nothing of
the others."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One section of the settings: unknown keys are an error, values never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
