"""Admin-only fault injection, mounted only when `[faults] admin_enabled` is true (default off)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app.http.dependencies import bearer, plane
from scheduler.faults import FaultMode


async def authorized(request: Request) -> None:
    """`Authorization: Bearer <[faults] admin_token>`, compared in constant time."""
    plane(request).authorize(bearer(request))


router = APIRouter(
    prefix="/admin", tags=["admin"], include_in_schema=False, dependencies=[Depends(authorized)]
)


class FaultRequest(BaseModel):
    mode: FaultMode


@router.post("/faults/{device}")
async def set_fault(request: Request, device: str, body: FaultRequest) -> dict[str, str]:
    """Every served model's session on that device fails, stalls or perturbs its outputs (they
    share the device; a shadow candidate's session is not touched)."""
    await plane(request).set_fault(device, body.mode)
    return {"device": device, "mode": body.mode}
