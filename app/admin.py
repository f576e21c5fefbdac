"""Admin-only fault injection, mounted only when `[faults] admin_enabled` is true (default off)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app import dependencies
from app.engine_link import RemoteModelRegistry
from app.errors import Unauthorized
from app.registry import ModelRegistry
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
    device: str, body: FaultRequest,
    models: Annotated[ModelRegistry, Depends(dependencies.accepting)],
) -> dict[str, str]:  # fmt: skip
    """Every served model's session on that device fails or stalls (they share the device)."""
    if isinstance(models, RemoteModelRegistry):  # a worker: the engine has the sessions
        if not await models.set_fault(device, body.mode):
            raise UnknownModel(f"device {device!r} is not served here")
        return {"device": device, "mode": body.mode}
    found = [
        candidate.backend
        for serving in models.serving()
        for candidate in serving.scheduler.devices
        if candidate.name == device and isinstance(candidate.backend, FaultInjector)
    ]
    if not found:
        raise UnknownModel(f"device {device!r} is not served here")
    for backend in found:
        backend.set_mode(body.mode)
    return {"device": device, "mode": body.mode}
