"""Files a run leaves behind: student weights, curve plot, checksums."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def file_sha256(path: Path | str | None, *, chunk: int = 1 << 20) -> str | None:
    """Hex sha256 of a file's bytes (``None`` for no file)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_fingerprint(dataset: Any) -> str:
    """sha256 identifying a dataset's content, cheap enough to run per job.

    Tensor datasets (``mnist5k``, ``synthetic``) hash their tensors; folder datasets hash the
    list of (file, label) pairs; anything else hashes its length and class labels.
    """
    digest = hashlib.sha256()
    tensors = getattr(dataset, "tensors", None)
    samples = getattr(dataset, "samples", None)
    if tensors is not None:
        for tensor in tensors:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    elif samples is not None:
        for path, label in samples:
            digest.update(f"{path}\t{label}\n".encode())
    else:
        digest.update(str(len(dataset)).encode())
        digest.update(str(list(getattr(dataset, "targets", []))).encode())
    return digest.hexdigest()


def save_student(student: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Student state dict as safetensors (loads back with ``create_model`` + strict load).

    ``metadata`` (strings) goes into the file's header, e.g. the epoch and its accuracy.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def write_curves_png(history: Sequence[Any], path: Path, title: str | None = None) -> Path:
    """Accuracy (train / test top-1) and loss (train / test) against the epoch, as a PNG.

    Epoch ticks are integers; the best test top-1 is marked (a dot and a dotted line at its
    epoch); ``title`` (job, method, teacher → student, dataset) heads the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row.epoch for row in history]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    acc_ax.plot(epochs, [row.train_top1 for row in history], label="train top-1")
    acc_ax.plot(epochs, [row.test_top1 for row in history], label="test top-1")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    loss_ax.plot(epochs, [row.train_loss for row in history], label="train loss")
    loss_ax.plot(epochs, [row.test_loss for row in history], label="test loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    if history:
        best = max(history, key=lambda row: (row.test_top1, -row.epoch))
        label = f"best {best.test_top1:.2f}% (epoch {best.epoch})"
        acc_ax.plot([best.epoch], [best.test_top1], "o", color="tab:red", label=label)
        for ax in (acc_ax, loss_ax):
            ax.axvline(best.epoch, color="tab:red", linestyle=":", linewidth=1)
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_student_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``student.safetensors`` written by :func:`save_student`."""
    from safetensors.torch import load_file

    return load_file(str(path))
