"""``/catalog``: the architectures, datasets, methods (with parameters) and presets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service import catalog

router = APIRouter(tags=["catalog"])


@router.get("/catalog")
def read_catalog() -> dict[str, Any]:
    """Every name a job spec may use, with each method's parameters and defaults."""
    return catalog.as_public_dict()
