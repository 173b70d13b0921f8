"""The job specification: one pydantic model for the ``POST /jobs`` body, the stored
``jobs.spec`` the worker reads back, and the CLI's YAML job files (see docs/internals.md).

Validation happens in two layers. Parsing (:class:`JobSpec`) checks each field on its own:
names against the catalog, numbers against their ranges, unknown keys rejected at every
level. :meth:`JobSpec.resolved` then fills unset fields from a preset and checks what needs
several fields at once (a teacher unless vanilla, architectures that fit the dataset's
images, class counts). Every error is a pydantic ``ValidationError`` whose ``loc`` names the
field, so the API's 422 bodies and the CLI's messages point at the offending key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service import catalog, schedule
from service.spec_checks import api_errors, check_randaugment, cross_errors, warmup_errors
from service.spec_values import unrepresentable

Loc = tuple[str | int, ...]

# Upper bounds of every integer a job may carry (docs/service.md lists them).
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_MILESTONES = 64
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take 32 bits
MAX_NUM_WORKERS = 64  # absolute; the API caps lower (settings.max_num_workers)
MAX_NUM_CLASSES = 100_000
MAX_PER_CLASS = 1_000_000
MAX_ID_LENGTH = 64
MAX_PRESET_LENGTH = 128  # the longest preset name is 73 characters
MAX_PATH_LENGTH = 4096
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # the shape of every id the service hands out


class _Strict(BaseModel):
    """Unknown keys refused; no coercion (``"5"`` and ``true`` are not integers); finite
    floats only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _known(table: dict, kind: str, name: str) -> str:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r} (known: {', '.join(sorted(table))})")
    return name


class TeacherSpec(_Strict):
    """Exactly one source: an uploaded checkpoint, an earlier job's student, or a local file.

    ``arch`` may be left out for the first two: the service fills it from the checkpoint's
    or the job's record.
    """

    arch: str | None = Field(default=None, json_schema_extra={"enum": list(catalog.ARCHITECTURES)})
    checkpoint_id: str | None = Field(default=None, pattern=ID_PATTERN)
    job_id: str | None = Field(default=None, pattern=ID_PATTERN)
    path: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)  # CLI only

    @field_validator("arch")
    @classmethod
    def _arch_known(cls, value: str | None) -> str | None:
        return value if value is None else _known(catalog.ARCHITECTURES, "architecture", value)

    def sources(self) -> list[str]:
        return [n for n in ("checkpoint_id", "job_id", "path") if getattr(self, n) is not None]


class StudentInitSpec(_Strict):
    """The student's initial weights, from exactly one source (as a teacher's): an uploaded
    checkpoint, an earlier job's student, or a local file (CLI only).

    ``backbone_only``: load only the backbone (classification: every layer but the
    classifier; detection: the detector's backbone), skipping keys the student lacks and
    reporting them. A classifier of ImageNet weights (``tv_resnet18`` for
    ``fasterrcnn_resnet18_fpn`` …, ``service.catalog.BACKBONE_SOURCES``) always loads as a
    detector's backbone.
    """

    checkpoint_id: str | None = Field(default=None, pattern=ID_PATTERN)
    job_id: str | None = Field(default=None, pattern=ID_PATTERN)
    path: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)  # CLI only
    backbone_only: bool = False

    def sources(self) -> list[str]:
        return [n for n in ("checkpoint_id", "job_id", "path") if getattr(self, n) is not None]


class StudentSpec(_Strict):
    arch: str = Field(json_schema_extra={"enum": list(catalog.ARCHITECTURES)})
    init: StudentInitSpec | None = Field(
        default=None, description="initial weights (default: random, seeded by training.seed)"
    )

    @field_validator("arch")
    @classmethod
    def _arch_known(cls, value: str) -> str:
        return _known(catalog.ARCHITECTURES, "architecture", value)


class DatasetSpec(_Strict):
    name: str = Field(json_schema_extra={"enum": list(catalog.DATASETS)})
    train_subset_per_class: int | None = Field(default=None, gt=0, le=MAX_PER_CLASS)
    # required for imagefolder only
    num_classes: int | None = Field(default=None, ge=2, le=MAX_NUM_CLASSES)
    root: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)  # CLI only

    @field_validator("name")
    @classmethod
    def _name_known(cls, value: str) -> str:
        return _known(catalog.DATASETS, "dataset", value)


class TrainingSpec(_Strict):
    epochs: int = Field(default=240, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(default=64, gt=0, le=MAX_BATCH_SIZE)
    lr: float = Field(default=0.05, gt=0, le=100)
    lr_milestones: list[int] = Field(
        default_factory=lambda: [150, 180, 210], max_length=MAX_MILESTONES
    )
    lr_gamma: float = Field(default=0.1, gt=0, le=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, le=1)
    nesterov: bool = True
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    amp: Literal["auto"] | bool = "auto"
    # the captured step + device-resident data (wkd_core.train.fast); "auto": on CUDA
    fast: Literal["auto"] | bool = "auto"
    num_workers: int = Field(default=2, ge=0, le=MAX_NUM_WORKERS)
    # Devices of one job: >1 runs it under torchrun with DDP, batch_size being the global
    # batch (docs/deploy.md, "Multi-GPU jobs").
    gpus: int = Field(default=1, ge=1, le=64)
    # OFA-KD's recipe (docs/service.md, "Training options"); every default is the
    # released WKD recipe's behaviour.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(default=1e-8, gt=0, le=1)
    decay_bias_and_norm: bool = True
    lr_schedule: Literal["step", "cosine"] = "step"
    min_lr: float = Field(default=0.0, ge=0, le=100)
    warmup_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    warmup_lr: float = Field(default=0.0, ge=0, le=100)
    grad_clip_norm: float | None = Field(default=None, gt=0, le=1e6)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    mixup_alpha: float = Field(default=0.0, ge=0, le=100)
    cutmix_alpha: float = Field(default=0.0, ge=0, le=100)
    mixup_prob: float = Field(default=1.0, ge=0, le=1)
    mixup_switch_prob: float = Field(default=0.5, ge=0, le=1)
    randaugment: str | None = Field(default=None, max_length=64)
    random_erasing: float = Field(default=0.0, ge=0, le=1)
    drop_path_rate: float | None = Field(default=None, ge=0, lt=1)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: list[float]) -> list[float]:
        if any(not 0 <= b < 1 for b in value):
            raise ValueError("AdamW's betas must lie in [0, 1)")
        return value

    @field_validator("randaugment")
    @classmethod
    def _randaugment_policy(cls, value: str | None) -> str | None:
        if value is not None:
            check_randaugment(value)
        return value

    @field_validator("lr_milestones")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(m <= 0 or m > MAX_EPOCHS for m in value):
            raise ValueError(f"milestones are epochs, so they must lie in 1..{MAX_EPOCHS}")
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError("milestones must be strictly increasing")
        return value


class InterrelationsSpec(_Strict):
    """How the category interrelations behind WKD-L's ground cost are obtained."""

    source: Literal["cka", "fc", "centroid", "file"] = "cka"
    kernel: Literal["linear", "poly", "rbf"] = "linear"
    feature: Literal["auto", "features", "logits"] = "auto"
    max_per_class: int | None = Field(default=None, gt=0, le=MAX_PER_CLASS)
    # source "file": a C×C distance matrix (CLI only)
    path: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)
    # source "file": an uploaded cost matrix (the service)
    checkpoint_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)


_PRESET_RULE = "required unless `preset` names a preset that gives it"


def _preset_enum(schema: dict[str, Any]) -> None:
    names = catalog.preset_names()
    if names:
        schema["enum"] = names


class JobSpec(_Strict):
    """A distillation job. Every field may come from ``preset``; explicit fields win.

    ``method``, ``student`` and ``dataset`` are required unless ``preset`` names a preset
    that gives them.
    """

    model_config = ConfigDict(json_schema_extra={
        "anyOf": [{"required": ["preset"]}, {"required": ["method", "student", "dataset"]}],
    })  # fmt: skip

    preset: str | None = Field(
        default=None, max_length=MAX_PRESET_LENGTH, json_schema_extra=_preset_enum,
        description="a released configuration (GET /catalog lists them); fills every field "
        "the body leaves out",
    )  # fmt: skip
    task: catalog.Task = Field(
        default="classification", description="classification, or detection (Faster R-CNN)"
    )
    method: str | None = Field(default=None, json_schema_extra={"enum": list(catalog.METHODS)},
                               description=_PRESET_RULE)  # fmt: skip
    params: dict[str, Any] = Field(
        default_factory=dict, description="the method's parameters (GET /catalog: names, "
        "types, defaults, ranges)",
    )  # fmt: skip
    teacher: TeacherSpec | None = Field(
        default=None, description="required by every method but vanilla (or from the preset)"
    )
    student: StudentSpec | None = Field(default=None, description=_PRESET_RULE)
    dataset: DatasetSpec | None = Field(default=None, description=_PRESET_RULE)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    interrelations: InterrelationsSpec = Field(default_factory=InterrelationsSpec)
    # Born-Again self-distillation (wkd_core/generations.py): generation 0 (trained alone, or
    # the teacher checkpoint if one is given), then N generations, each distilled with
    # ``method`` from the previous one; the teacher architecture is the student's.
    generations: int | None = Field(default=None, ge=1, le=20)
    notes: list[str] = Field(default_factory=list)  # written by the service (schedule.py)

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any) -> Any:
        """Refuse what JSON cannot carry back: NaN/Infinity, lone surrogates, deep nesting."""
        raise_if(list(unrepresentable(data, ())))
        return data

    @model_validator(mode="before")
    @classmethod
    def _identity_from_preset(cls, data: Any, info: ValidationInfo) -> Any:
        """Let a job refine its preset's student or dataset without naming it again.

        ``{"preset": P, "dataset": {"train_subset_per_class": 50}}`` takes ``dataset.name``
        from P, and a ``student`` without ``arch`` takes P's ``student.arch``. Without this the
        partial object fails here ("Field required") before ``resolved`` merges the preset.
        """
        if not isinstance(data, dict) or not isinstance(data.get("preset"), str):
            return data
        partial = [(part, key) for part, key in (("student", "arch"), ("dataset", "name"))
                   if isinstance(data.get(part), dict) and key not in data[part]]  # fmt: skip
        if not partial:
            return data
        get_preset = (info.context or {}).get("get_preset", catalog.get_preset)
        try:
            base = get_preset(data["preset"])
        except LookupError as error:
            raise spec_error([(("preset",), str(error), data["preset"])]) from error
        filled = dict(data)
        for part, key in partial:
            if key in (base.get(part) or {}):
                filled[part] = {key: base[part][key], **data[part]}
        return filled

    @field_validator("method")
    @classmethod
    def _method_known(cls, value: str | None) -> str | None:
        return value if value is None else _known(catalog.METHODS, "method", value)

    def resolved(self, get_preset: Callable[[str], dict[str, Any]] = catalog.get_preset) -> JobSpec:
        """The complete spec: preset values under explicit ones, method defaults filled in.

        Raises ``ValidationError`` naming the field when the result is incomplete or its
        parts do not fit together.
        """
        merged = self.model_dump(exclude_unset=True)
        explicit = dict(merged)
        recipe_epochs = schedule.DEFAULT_EPOCHS
        if self.preset is not None:
            try:
                base = get_preset(self.preset)
            except LookupError as error:
                raise spec_error([(("preset",), str(error), self.preset)]) from error
            if "method" in merged and merged["method"] != base.get("method"):
                base.pop("params", None)  # another method's parameters do not apply
            recipe_epochs = base.get("training", {}).get("epochs", recipe_epochs)
            merged = _deep_merge(base, merged)
        elif defaults := schedule.task_training_defaults(merged.get("task", "classification")):
            recipe_epochs = defaults["epochs"]
            merged = _deep_merge({"training": defaults}, merged)
        spec = JobSpec.model_validate(merged, context={"get_preset": get_preset})
        raise_if(cross_errors(spec))
        table = catalog.methods_of(spec.task)[spec.method].params
        params = {n: p.default for n, p in table.items()}
        check = catalog.check_param
        params.update({n: check(spec.method, n, v, task=spec.task) for n, v in spec.params.items()})
        milestones, params, notes = schedule.scale_schedule(
            explicit, recipe_epochs=recipe_epochs, milestones=spec.training.lr_milestones,
            params=params,
        )  # fmt: skip
        warmup, warmup_notes = schedule.scale_warmup(
            explicit, recipe_epochs=recipe_epochs, warmup_epochs=spec.training.warmup_epochs
        )
        training = spec.training.model_copy(
            update={"lr_milestones": milestones, "warmup_epochs": warmup}
        )
        notes = [*spec.notes, *notes, *warmup_notes]
        spec = spec.model_copy(update={"params": params, "training": training, "notes": notes})
        raise_if(warmup_errors(spec))
        return spec

    def to_stored(self) -> dict[str, Any]:
        """The plain-dict form ``wkd_core.pipeline`` and ``jobs.spec`` take."""
        return self.model_dump(mode="json")


def validate_job_spec(
    data: dict[str, Any],
    *,
    for_api: bool = False,
    get_preset: Callable[[str], dict[str, Any]] = catalog.get_preset,
) -> JobSpec:
    """Parse, resolve and check a job spec; ``for_api`` also rejects server paths."""
    spec = JobSpec.model_validate(data, context={"get_preset": get_preset})
    if for_api:
        notes = [(("notes",), "written by the service; leave it out", spec.notes)]
        raise_if(api_errors(spec) + (notes if spec.notes else []))
    spec = spec.resolved(get_preset)
    if for_api:
        raise_if(api_errors(spec))
    return spec


def spec_error(errors: Iterable[tuple[Loc, str, Any]]) -> ValidationError:
    """A pydantic ``ValidationError`` carrying our own (loc, message, input) triples."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("job_spec", "{reason}", {"reason": message}),
            loc=loc,
            input=value,
        )
        for loc, message, value in errors
    ]
    return ValidationError.from_exception_data("JobSpec", details)


def raise_if(errors: list[tuple[Loc, str, Any]]) -> None:
    if errors:
        raise spec_error(errors)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
