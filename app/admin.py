"""Admin-only fault injection, mounted only when `[faults] admin_enabled` is true (default off)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app import dependencies
from app.errors import Unauthorized
from app.serving import Serving
from scheduler.errors import UnknownModel
from scheduler.faults import FaultInjector, FaultMode


async def authorized(request: Request) -> None:
    """`Authorization: Bearer <[faults] admin_token>`, compared in constant time."""
    token: str = request.app.state.settings.faults.admin_token
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("Authorization: a bearer token ([faults] admin_token) is required")


router = APIRouter(
    prefix="/admin", tags=["admin"], include_in_schema=False, dependencies=[Depends(authorized)]
)


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
