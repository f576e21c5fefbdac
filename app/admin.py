"""Admin-only fault injection, mounted only when `[faults] admin_enabled` is true (default off)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from app import dependencies
from app.serving import Serving
from scheduler.errors import UnknownModel
from scheduler.faults import FaultInjector, FaultMode

router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False)


class FaultRequest(BaseModel):
    mode: FaultMode


@router.post("/faults/{device}")
async def set_fault(
    device: str, body: FaultRequest, serving: Annotated[Serving, Depends(dependencies.serving)]
) -> dict[str, str]:
    for candidate in serving.scheduler.devices:
        if candidate.name == device and isinstance(candidate.backend, FaultInjector):
            candidate.backend.set_mode(body.mode)
            return {"device": device, "mode": body.mode}
    raise UnknownModel(f"device {device!r} is not served here")
