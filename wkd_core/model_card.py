"""``model_card.md``: what a finished student is, how it was made and how well it does.

Built from the run's manifest (spec, checksums, versions, accuracies) and the ONNX
verification report, so every figure in the card is one the run computed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD_NAME = "model_card.md"


def _teacher_line(spec: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    teacher = spec.get("teacher") or {}
    if spec["method"] == "vanilla" or not teacher:
        return "none (trained without a teacher)"
    source = next(
        (f"{k} `{teacher[k]}`" for k in ("checkpoint_id", "job_id", "path") if teacher.get(k)),
        "",
    )
    digest = manifest.get("teacher_sha256")
    return f"`{teacher.get('arch')}` {source}" + (f", sha256 `{digest}`" if digest else "")


def _table(rows: Mapping[str, Any]) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | `{json.dumps(v, default=str)}` |" for k, v in rows.items()]
    return lines


def render_model_card(
    manifest: Mapping[str, Any], *, parameters: int, onnx: Mapping[str, Any] | None, title: str
) -> str:
    """The card's markdown (see the module doc)."""
    spec = manifest["spec"]
    dataset = spec["dataset"]
    lines = [
        f"# Model card: {title}",
        "",
        "## Model",
        f"- Architecture: `{spec['student']['arch']}` ({parameters:,} parameters), "
        f"trained on `{dataset['name']}`.",
        f"- Teacher: {_teacher_line(spec, manifest)}.",
        f"- Method: `{spec['method']}`.",
        "- Load it: `wkd_core.models.create_model(arch, num_classes)` then "
        "`load_state_dict(safetensors.torch.load_file(path), strict=True)`; the ONNX files take "
        "`input` (N, 3, H, W), normalised as the dataset's test transform, and give `logits`.",
        "",
        "## Accuracy (test split, top-1 %)",
        f"- Best: **{manifest['best_top1']:.2f}** at epoch {manifest['best_epoch']} "
        "(`student_best.*`).",
        f"- Last: **{manifest['last_top1']:.2f}** (`student_last.*`, also `student.safetensors`).",
        "",
        "![training curves](curves.png)",
        "",
        "## Method hyper-parameters",
        *_table(spec.get("params") or {}),
        "",
        "## Training",
        *_table(spec["training"]),
        "",
    ]
    if spec.get("notes"):
        lines += ["Notes:", *(f"- {note}" for note in spec["notes"]), ""]
    if onnx:
        lines += ["## ONNX verification (onnxruntime CPU against PyTorch, whole test split)", ""]
        lines += ["| file | exporter | opset | images | same top-1 | max abs logit diff | ok |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for name, row in onnx.items():
            lines.append(
                f"| `{name}` | {row['exporter']} | {row['opset']} | {row['samples']} | "
                f"{100 * row['top1_agreement']:.2f}% | {row['max_abs_logit_diff']:.2e} | "
                f"{'yes' if row['passed'] else 'NO'} |"
            )
        lines.append("")
    lines += ["## Files (sha256)", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in manifest.get("files", {}).items()]
    if manifest.get("teacher_sha256"):
        lines.append(f"| teacher | `{manifest['teacher_sha256']}` |")
    lines += [f"| data fingerprint | `{manifest.get('data_fingerprint')}` |", ""]
    lines += ["## Versions", "", *(f"- {k} {v}" for k, v in manifest["versions"].items())]
    lines += [f"- device: {manifest.get('device')}", f"- seed: {manifest.get('seed')}", ""]
    return "\n".join(lines)


def write_model_card(
    manifest: Mapping[str, Any],
    out_dir: Path,
    *,
    parameters: int,
    onnx: Mapping[str, Any] | None,
    title: str,
) -> Path:
    """Write ``model_card.md`` into ``out_dir`` and return its path."""
    path = Path(out_dir) / CARD_NAME
    path.write_text(render_model_card(manifest, parameters=parameters, onnx=onnx, title=title))
    return path
