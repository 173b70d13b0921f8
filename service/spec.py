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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from service import catalog, schedule

Loc = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _known(table: dict, kind: str, name: str) -> str:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r} (known: {', '.join(sorted(table))})")
    return name


class TeacherSpec(_Strict):
    """Exactly one source: an uploaded checkpoint, an earlier job's student, or a local file.

    ``arch`` may be left out for the first two: the service fills it from the checkpoint's
    or the job's record.
    """

    arch: str | None = None
    checkpoint_id: str | None = None
    job_id: str | None = None
    path: str | None = None  # CLI only; the API rejects paths

    @field_validator("arch")
    @classmethod
    def _arch_known(cls, value: str | None) -> str | None:
        return value if value is None else _known(catalog.ARCHITECTURES, "architecture", value)

    def sources(self) -> list[str]:
        return [n for n in ("checkpoint_id", "job_id", "path") if getattr(self, n) is not None]


class StudentSpec(_Strict):
    arch: str

    @field_validator("arch")
    @classmethod
    def _arch_known(cls, value: str) -> str:
        return _known(catalog.ARCHITECTURES, "architecture", value)


class DatasetSpec(_Strict):
    name: str
    train_subset_per_class: int | None = Field(default=None, gt=0)
    num_classes: int | None = Field(default=None, ge=2)  # required for imagefolder only
    root: str | None = None  # CLI only; the service uses its dataset_root

    @field_validator("name")
    @classmethod
    def _name_known(cls, value: str) -> str:
        return _known(catalog.DATASETS, "dataset", value)


class TrainingSpec(_Strict):
    epochs: int = Field(default=240, gt=0, le=10_000)
    batch_size: int = Field(default=64, gt=0, le=65_536)
    lr: float = Field(default=0.05, gt=0, le=100)
    lr_milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])
    lr_gamma: float = Field(default=0.1, gt=0, le=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, le=1)
    nesterov: bool = True
    seed: int = Field(default=0, ge=0)
    amp: Literal["auto"] | bool = "auto"
    num_workers: int = Field(default=2, ge=0, le=64)

    @field_validator("lr_milestones")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(m <= 0 for m in value):
            raise ValueError("milestones are epochs, so they must be positive")
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError("milestones must be strictly increasing")
        return value


class InterrelationsSpec(_Strict):
    """How the category interrelations behind WKD-L's ground cost are obtained."""

    source: Literal["cka", "fc", "file"] = "cka"
    kernel: Literal["linear", "poly", "rbf"] = "linear"
    feature: Literal["auto", "features", "logits"] = "auto"
    max_per_class: int | None = Field(default=None, gt=0)
    path: str | None = None  # source "file": a C×C distance matrix (CLI only)
    checkpoint_id: str | None = None  # source "file": an uploaded cost matrix (the service)


class JobSpec(_Strict):
    """A distillation job. Every field may come from ``preset``; explicit fields win."""

    preset: str | None = None
    method: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    teacher: TeacherSpec | None = None
    student: StudentSpec | None = None
    dataset: DatasetSpec | None = None
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    interrelations: InterrelationsSpec = Field(default_factory=InterrelationsSpec)
    notes: list[str] = Field(default_factory=list)  # written by the service (schedule.py)

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
        spec = JobSpec.model_validate(merged)
        raise_if(cross_errors(spec))
        table = catalog.METHODS[spec.method].params
        params = {n: p.default for n, p in table.items()}
        params.update({n: catalog.check_param(spec.method, n, v) for n, v in spec.params.items()})
        milestones, params, notes = schedule.scale_schedule(
            explicit, recipe_epochs=recipe_epochs, milestones=spec.training.lr_milestones,
            params=params,
        )  # fmt: skip
        training = spec.training.model_copy(update={"lr_milestones": milestones})
        return spec.model_copy(
            update={"params": params, "training": training, "notes": [*spec.notes, *notes]}
        )

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
    spec = JobSpec.model_validate(data)
    if for_api:
        notes = [(("notes",), "written by the service; leave it out", spec.notes)]
        raise_if(api_errors(spec) + (notes if spec.notes else []))
    spec = spec.resolved(get_preset)
    if for_api:
        raise_if(api_errors(spec))
    return spec


def api_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """Fields a remote client may not set: filesystem paths on the server."""
    message = "paths are not accepted by the service; upload the file and give its id"
    errors = []
    if spec.teacher is not None and spec.teacher.path is not None:
        errors.append((("teacher", "path"), message, spec.teacher.path))
    if spec.dataset is not None and spec.dataset.root is not None:
        errors.append((("dataset", "root"), message, spec.dataset.root))
    if spec.interrelations.path is not None:
        errors.append((("interrelations", "path"), message, spec.interrelations.path))
    return errors


def teacher_class_errors(spec: JobSpec, teacher_num_classes: int) -> list[tuple[Loc, str, Any]]:
    """A teacher must classify into exactly the dataset's classes."""
    assert spec.teacher is not None and spec.dataset is not None
    expected = catalog.dataset_num_classes(spec.dataset.name, spec.dataset.num_classes)
    if expected is None or teacher_num_classes == expected:
        return []
    source = spec.teacher.sources()[0] if spec.teacher.sources() else "arch"
    return [
        (
            ("teacher", source),
            f"the teacher has {teacher_num_classes} classes but dataset "
            f"{spec.dataset.name!r} has {expected}",
            getattr(spec.teacher, source, None),
        )
    ]


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


def cross_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """Checks that need several fields (run on the merged, preset-filled spec)."""
    errors: list[tuple[Loc, str, Any]] = []
    for name in ("method", "student", "dataset"):
        if getattr(spec, name) is None:
            errors.append(((name,), "field required (here or in the preset)", None))
    if errors:
        return errors
    method = catalog.METHODS[spec.method]
    for name, value in spec.params.items():
        try:
            catalog.check_param(spec.method, name, value)
        except ValueError as error:
            errors.append((("params", name), str(error), value))
    kind = catalog.DATASETS[spec.dataset.name].input_kind
    errors += _input_kind_errors(("student", "arch"), spec.student.arch, spec.dataset.name, kind)
    errors += _dataset_errors(spec.dataset)
    if not method.needs_teacher:
        if spec.teacher is not None:
            errors.append((("teacher",), f"method {spec.method!r} takes no teacher", None))
        return errors
    if spec.teacher is None:
        errors.append((("teacher",), f"method {spec.method!r} needs a teacher", None))
        return errors
    if len(spec.teacher.sources()) != 1:
        message = "give exactly one of checkpoint_id, job_id, path"
        errors.append((("teacher",), message, spec.teacher.sources()))
    if spec.teacher.arch is not None:
        errors += _input_kind_errors(
            ("teacher", "arch"), spec.teacher.arch, spec.dataset.name, kind
        )
    elif spec.teacher.path is not None:
        errors.append((("teacher", "arch"), "required with a teacher path", None))
    ir = spec.interrelations
    if ir.source == "file" and (ir.path is None) == (ir.checkpoint_id is None):
        message = "source 'file' needs exactly one of path (CLI) or checkpoint_id (an upload)"
        errors.append((("interrelations", "checkpoint_id"), message, None))
    elif ir.source != "file" and ir.checkpoint_id is not None:
        message = "a cost-matrix checkpoint_id goes with source 'file'"
        errors.append((("interrelations", "source"), message, ir.source))
    return errors


def _input_kind_errors(loc: Loc, arch: str, dataset: str, kind: str) -> list:
    arch_kind = catalog.ARCHITECTURES[arch].input_kind
    if arch_kind == kind:
        return []
    message = f"{arch!r} is a {arch_kind} model but dataset {dataset!r} has {kind} images"
    return [(loc, message, arch)]


def _dataset_errors(dataset: DatasetSpec) -> list:
    fixed = catalog.DATASETS[dataset.name].num_classes
    if fixed is None and dataset.num_classes is None:
        return [(("dataset", "num_classes"), f"required for dataset {dataset.name!r}", None)]
    if fixed is not None and dataset.num_classes not in (None, fixed):
        message = f"dataset {dataset.name!r} has {fixed} classes"
        return [(("dataset", "num_classes"), message, dataset.num_classes)]
    return []


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
