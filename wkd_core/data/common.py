"""What every dataset shares: its static description and the registration decorator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wkd_core.registry import DATASETS

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, known without reading any data.

    Attributes:
        num_classes: number of classes, or ``None`` when only the data can tell
            (``imagefolder``: the number of sub-folders).
        image_size: side of the square (3, S, S) tensors the dataset yields.
        mean: per-channel normalisation mean (RGB).
        std: per-channel normalisation standard deviation (RGB).
    """

    num_classes: int | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_INFOS: dict[str, Callable[..., DatasetInfo]] = {}


def register_dataset(
    name: str, info: DatasetInfo | Callable[..., DatasetInfo]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a dataset factory in ``DATASETS`` together with its :class:`DatasetInfo`.

    ``info`` is either a constant or a function of the factory's options (``synthetic``
    depends on its ``shape`` option).
    """

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        DATASETS.register(name)(factory)
        _INFOS[name] = info if callable(info) else (lambda **_: info)
        return factory

    return decorator


def dataset_info(name: str, **options: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset, without touching its data.

    Args:
        name: a name of ``wkd_core.registry.DATASETS`` (``cifar100``, ``mnist5k`` …).
        **options: the dataset options that change the facts (``shape`` for ``synthetic``).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    DATASETS.get(name)  # raises the registry's ValueError naming the known datasets
    return _INFOS[name](**options)


def spec_dataset_info(name: str, options: dict[str, Any]) -> DatasetInfo:
    """:func:`dataset_info` of a dataset given all of a spec's options for it: those its
    info function takes (``shape`` and ``num_classes`` for ``synthetic``; ``image_size``,
    ``mean``, ``std`` for ``imagefolder``) change the facts, the others (``length``,
    ``root``, subsets …) do not."""
    DATASETS.get(name)
    accepted = inspect.signature(_INFOS[name]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    facts = {k: v for k, v in options.items() if v is not None and (k in accepted)}
    return _INFOS[name](**({} if takes_any else facts))


def takes_option(name: str, option: str) -> bool:
    """Whether the factory of dataset ``name`` takes the keyword ``option``."""
    return option in inspect.signature(DATASETS.get(name)).parameters


def check_split(split: str) -> str:
    """Validate ``split``; ``val`` and ``test`` both mean the held-out split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split
