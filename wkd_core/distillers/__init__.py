"""Distillers: one per method, each a :class:`Distiller` returning named loss terms.

``create_distiller(name, *, student, teacher=None, **params)`` builds any registered method
(``vanilla``, ``kd``, ``dkd``, ``fitnet``, ``wkd_l``, ``wkd_f``, ``wkd_lf``); its
hyper-parameters are the keyword arguments of the method's class.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wkd_core.distillers import dkd, fitnet, kd, vanilla, wkd  # noqa: F401  (registers the methods)
from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.distillers.dkd import DKD
from wkd_core.distillers.fitnet import FitNet
from wkd_core.distillers.kd import KD
from wkd_core.distillers.projectors import (
    ConvReg,
    ConvRegBottleNeck,
    build_projector,
    probe_feature_shapes,
)
from wkd_core.distillers.vanilla import Vanilla
from wkd_core.distillers.wkd import WKD, WKDF, WKDL, WKDLF, build_cost
from wkd_core.registry import DISTILLERS

__all__ = [
    "DKD",
    "KD",
    "WKD",
    "WKDF",
    "WKDL",
    "WKDLF",
    "ConvReg",
    "ConvRegBottleNeck",
    "DistillOutput",
    "Distiller",
    "FitNet",
    "Vanilla",
    "build_cost",
    "build_projector",
    "create_distiller",
    "list_distillers",
    "probe_feature_shapes",
]


def create_distiller(
    name: str, *, student: nn.Module, teacher: nn.Module | None = None, **params: Any
) -> Distiller:
    """The distiller ``name`` around ``student`` and (frozen) ``teacher``.

    Args:
        name: a registered method (see :func:`list_distillers`).
        student: the model to train.
        teacher: the teacher; required by every method but ``vanilla``.
        **params: the method's keyword hyper-parameters (e.g. a preset's ``params``).

    Raises:
        ValueError: unknown method, missing teacher, or a parameter the method does not take.
    """
    factory = DISTILLERS.get(name)
    if teacher is None and name != "vanilla":
        raise ValueError(f"method {name!r} needs a teacher")
    try:
        return factory(student=student, teacher=teacher, **params)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ValueError(f"method {name!r}: {err}") from None
        raise


def list_distillers() -> list[str]:
    """Names of the registered methods."""
    return DISTILLERS.names()
