"""Checks of a job spec that need several fields at once: the required trio, the method's
parameters, model and dataset kinds, the task, Born-Again generations, the teacher's source,
the student's initial weights and the interrelation source. Run by
:meth:`service.spec.JobSpec.resolved` on the merged, preset-filled spec; each problem is
``(loc, message, value)`` for a 422 naming the field. Also the service's own checks:
:func:`api_errors` (no server paths from a remote client) and :func:`teacher_class_errors`
(the teacher's classes against the dataset's).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from service import catalog

if TYPE_CHECKING:
    from service.spec import DatasetSpec, JobSpec, Loc


def cross_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """Checks that need several fields (run on the merged, preset-filled spec)."""
    errors: list[tuple[Loc, str, Any]] = []
    for name in ("method", "student", "dataset"):
        if getattr(spec, name) is None:
            errors.append(((name,), "field required (here or in the preset)", None))
    if errors:
        return errors
    methods = catalog.methods_of(spec.task)
    if spec.method not in methods:  # e.g. FitNet, which has no detection form
        message = f"not a {spec.task} method (known: {', '.join(methods)})"
        return [(("method",), message, spec.method)]
    method = methods[spec.method]
    for name, value in spec.params.items():
        try:
            catalog.check_param(spec.method, name, value, task=spec.task)
        except ValueError as error:
            errors.append((("params", name), str(error), value))
    kind = catalog.DATASETS[spec.dataset.name].input_kind
    errors += _task_errors(spec, kind)
    errors += _recipe_errors(spec)
    errors += _input_kind_errors(("student", "arch"), spec.student.arch, spec.dataset.name, kind)
    errors += _dataset_errors(spec.dataset)
    errors += _student_init_errors(spec)
    errors += _interrelation_errors(spec)
    errors += _combination_errors(spec)
    if spec.generations is not None:
        return errors + _generation_errors(spec, method.needs_teacher)
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
    return errors


# The methods whose loss uses the category interrelations (WKD-L's ground cost).
INTERRELATION_METHODS = ("wkd_l", "wkd_lf")


def _interrelation_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """A cost-matrix file only where WKD-L runs, from exactly one place; the sources the
    detection pipeline has (no class centroids, no uploaded matrix)."""
    ir = spec.interrelations
    names_a_matrix = ir.source == "file" or ir.checkpoint_id is not None or ir.path is not None
    if names_a_matrix and spec.method not in INTERRELATION_METHODS:
        message = f"a cost matrix is for {' and '.join(INTERRELATION_METHODS)} only"
        return [(("interrelations",), message, spec.method)]
    if ir.source == "file" and (ir.path is None) == (ir.checkpoint_id is None):
        message = "source 'file' needs exactly one of path (CLI) or checkpoint_id (an upload)"
        return [(("interrelations", "checkpoint_id"), message, None)]
    if ir.source != "file" and ir.checkpoint_id is not None:
        message = "a cost-matrix checkpoint_id goes with source 'file'"
        return [(("interrelations", "source"), message, ir.source)]
    if ir.source == "cka" and ir.max_per_class == 1 and spec.method in INTERRELATION_METHODS:
        message = "CKA compares each class's features with themselves: at least 2 per class"
        return [(("interrelations", "max_per_class"), message, 1)]
    if spec.task == "detection" and spec.method in INTERRELATION_METHODS:
        if ir.source == "centroid":
            message = "not available for detection (cka, fc, or a file given by path)"
            return [(("interrelations", "source"), message, ir.source)]
        if ir.checkpoint_id is not None:
            message = "an uploaded cost matrix is for classification jobs"
            return [(("interrelations", "checkpoint_id"), message, ir.checkpoint_id)]
    return []


def _combination_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """Values allowed one by one that cannot go together (each failed the job once, at its
    first step): Nesterov SGD without momentum, γ ≠ 1 with a divergence that has no
    separate mean term."""
    errors: list[tuple[Loc, str, Any]] = []
    training = spec.training
    if training.optimizer == "sgd" and training.nesterov and training.momentum == 0:
        message = "Nesterov SGD needs momentum > 0: set training.nesterov to false"
        errors.append((("training", "nesterov"), message, True))
    divergence = spec.params.get("divergence")
    table = catalog.methods_of(spec.task)[spec.method].params
    default = table["mean_cov_ratio"].default if "mean_cov_ratio" in table else 1.0
    ratio = spec.params.get("mean_cov_ratio", default)  # the job runs with the default
    if divergence is not None and divergence not in catalog.SEPARABLE_DIVERGENCES and ratio != 1:
        message = (f"divergence {divergence!r} has no separate mean term: "
                   "set params.mean_cov_ratio to 1")  # fmt: skip
        errors.append((("params", "mean_cov_ratio"), message, ratio))
    return errors


def _student_init_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """One source of initial weights; none with Born-Again generations (each generation's
    student starts afresh by definition)."""
    assert spec.student is not None
    init = spec.student.init
    if init is None:
        return []
    if spec.generations is not None:
        return [(("student", "init"), "not available with generations", None)]
    if len(init.sources()) != 1:
        message = "give exactly one of checkpoint_id, job_id, path"
        return [(("student", "init"), message, init.sources())]
    return []


def _generation_errors(spec: JobSpec, needs_teacher: bool) -> list[tuple[Loc, str, Any]]:
    """Born-Again: a distillation method; a teacher (generation 0) is optional, of the
    student's architecture, from one source."""
    assert spec.student is not None
    if not needs_teacher:
        return [(("method",), "generations need a distillation method (kd, wkd_l …)", None)]
    if spec.task == "detection":
        return [(("generations",), "Born-Again generations are for classification", None)]
    if spec.teacher is None:
        return []
    errors: list[tuple[Loc, str, Any]] = []
    if len(spec.teacher.sources()) > 1:  # none: generation 0 is trained
        errors.append((("teacher",), "give at most one of checkpoint_id, job_id, path", None))
    if spec.teacher.arch not in (None, spec.student.arch):
        message = "in generations the teacher (generation 0) has the student's architecture"
        errors.append((("teacher", "arch"), message, spec.teacher.arch))
    return errors


# Datasets whose training transform takes ``randaugment`` and ``random_erasing``
# (wkd_core/data/cifar_upsampled.py: OFA-KD's timm loader).
AUGMENTABLE_DATASETS = ("cifar100_224",)
# Training options of OFA-KD's recipe and their off values (the classification trainer's;
# the detection loop has none of them).
RECIPE_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd", "decay_bias_and_norm": True, "lr_schedule": "step", "warmup_epochs": 0,
    "label_smoothing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "randaugment": None,
    "random_erasing": 0.0, "drop_path_rate": None,
}  # fmt: skip


def _recipe_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """OFA-KD's training options: where they apply and how they fit together."""
    assert spec.dataset is not None and spec.student is not None
    training, errors = spec.training, []
    if spec.task == "detection":
        for name, off in RECIPE_DEFAULTS.items():
            if getattr(training, name) != off:
                message = f"not available for detection (the detection loop uses {off!r})"
                errors.append((("training", name), message, getattr(training, name)))
        if training.gpus > 1:  # the detection pipeline has no distributed handling
            message = "detection runs in one process on one GPU (no torchrun)"
            errors.append((("training", "gpus"), message, training.gpus))
        return errors
    augment = {"randaugment": training.randaugment, "random_erasing": training.random_erasing}
    if spec.dataset.name not in AUGMENTABLE_DATASETS:
        for name, value in augment.items():
            if value:
                message = f"only for {', '.join(AUGMENTABLE_DATASETS)} (OFA-KD's loader)"
                errors.append((("training", name), message, value))
    family = catalog.ARCHITECTURES[spec.student.arch].family
    if training.drop_path_rate is not None and family != "timm":
        message = f"drop path is a timm option; student {spec.student.arch!r} is {family!r}"
        errors.append((("training", "drop_path_rate"), message, training.drop_path_rate))
    if training.lr_schedule == "cosine" and training.min_lr > training.lr:
        message = f"the cosine schedule decays from lr ({training.lr}) down to min_lr"
        errors.append((("training", "min_lr"), message, training.min_lr))
    return errors


def warmup_errors(spec: JobSpec) -> list[tuple[Loc, str, Any]]:
    """The learning-rate warm-up must end before the last epoch (checked after scaling)."""
    warmup, epochs = spec.training.warmup_epochs, spec.training.epochs
    if warmup and warmup >= epochs:
        message = f"the warm-up must end before the last epoch (epochs: {epochs})"
        return [(("training", "warmup_epochs"), message, warmup)]
    return []


def _task_errors(spec: JobSpec, kind: str) -> list:
    """Detection needs a detection dataset (then the architectures' kind is checked as usual);
    a detection dataset needs ``task: detection``."""
    assert spec.dataset is not None
    name = spec.dataset.name
    if spec.task == "detection" and kind != "detection":
        return [(("dataset", "name"), f"dataset {name!r} has no boxes: not a detection set", name)]
    if spec.task != "detection" and kind == "detection":
        message = f"dataset {name!r} is a detection dataset: set task to 'detection'"
        return [(("task",), message, spec.task)]
    if spec.task == "detection" and spec.dataset.train_subset_per_class is not None:
        value = spec.dataset.train_subset_per_class
        return [(("dataset", "train_subset_per_class"), "not available for detection", value)]
    return []


def _input_kind_errors(loc: Loc, arch: str, dataset: str, kind: str) -> list:
    arch_kind = catalog.ARCHITECTURES[arch].input_kind
    if arch_kind == kind:
        return []
    message = f"{arch!r} is a {arch_kind} model but dataset {dataset!r} has {kind} images"
    return [(loc, message, arch)]


def _dataset_errors(dataset: DatasetSpec) -> list:
    info = catalog.DATASETS[dataset.name]
    subset, most = dataset.train_subset_per_class, info.max_per_class
    if subset is not None and most is not None and subset > most:
        message = f"dataset {dataset.name!r} has {most} training samples per class"
        if most == 0:
            message = f"dataset {dataset.name!r} has no labels to take a subset of"
        return [(("dataset", "train_subset_per_class"), message, subset)]
    fixed = info.num_classes
    if fixed is None and dataset.num_classes is None:
        return [(("dataset", "num_classes"), f"required for dataset {dataset.name!r}", None)]
    if fixed is not None and dataset.num_classes not in (None, fixed):
        message = f"dataset {dataset.name!r} has {fixed} classes"
        return [(("dataset", "num_classes"), message, dataset.num_classes)]
    return []


# timm's RandAugment policy strings (timm.data.auto_augment.rand_augment_transform):
# "rand" then "-"-separated sections m<magnitude>, n<ops>, mstd<std>, mmax<max>, inc<0|1>,
# p<probability>; OFA-KD's Transformer-student config uses "rand-m9-mstd0.5-inc1".
_RAND_SECTIONS = (
    r"m\d{1,2}", r"n\d{1,2}", r"mstd\d{1,3}(\.\d+)?", r"mmax\d{1,2}", r"inc[01]",
    r"p(0(\.\d+)?|1(\.0+)?)",  # timm splits at the first digit: "p.5" is not a section
)  # fmt: skip
_RAND_SECTION = re.compile("|".join(f"(?:{p})" for p in _RAND_SECTIONS))


def check_randaugment(policy: str) -> None:
    """Raise ``ValueError`` unless ``policy`` is a RandAugment string timm accepts."""
    head, *sections = policy.split("-")
    bad = [s for s in sections if not _RAND_SECTION.fullmatch(s)]
    if head != "rand" or bad:
        raise ValueError(
            f"not a RandAugment policy: {policy!r} (expected 'rand' and '-'-separated "
            "sections m<0-99>, n<0-99>, mstd<x>, mmax<0-99>, inc<0|1>, p<0-1>, e.g. "
            "'rand-m9-mstd0.5-inc1')"
        )


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
    init = spec.student.init if spec.student is not None else None
    if init is not None and init.path is not None:
        errors.append((("student", "init", "path"), message, init.path))
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
