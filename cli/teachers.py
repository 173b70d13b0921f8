"""``wkd teachers import|list``: the pre-trained teachers users already have.

The standard CIFAR-100 teachers are distributed as mdistiller's ``cifar_teachers.tar`` (GitHub
release ``checkpoints`` of megvii-research/mdistiller), laid out as
``cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth``, each a dict whose ``"model"`` entry is
the state dict. ``wkd teachers import PATH`` reads such an archive (or the folder it unpacks
to), takes the architecture from the folder name, strictly loads every checkpoint into that
architecture, and either

* registers it locally: ``<registry>/<dataset>/<arch>.safetensors`` plus ``teachers.json``
  (name, architecture, classes, sha256 of the original file and of the saved weights), so that
  ``wkd distill --teacher cifar100/resnet32x4`` finds it by name; or
* with ``--url``, uploads it to a service (``POST /checkpoints``, as safetensors) and prints
  the checkpoint ids to use as ``teacher.checkpoint_id``.

The registry is ``$WKD_TEACHERS_DIR``, else ``~/.wkd/teachers`` (``--registry`` overrides).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMBER = re.compile(r"(?:^|/)(?P<arch>[A-Za-z0-9_]+)_vanilla/[^/]+\.pth?$")
INDEX = "teachers.json"


@dataclass
class Found:
    """A checkpoint in the archive: where it is and the architecture its folder names."""

    member: str  # path inside the archive or folder
    arch: str
    path: Path  # the file on disk (extracted for an archive)


def registry_dir(explicit: str | None = None) -> Path:
    """``--registry``, else ``$WKD_TEACHERS_DIR``, else ``~/.wkd/teachers``."""
    chosen = explicit or os.environ.get("WKD_TEACHERS_DIR") or Path.home() / ".wkd" / "teachers"
    return Path(chosen).expanduser()


def iter_checkpoints(source: Path, scratch: Path) -> Iterator[Found]:
    """Every ``<arch>_vanilla/*.pth`` in a tar archive (extracted into ``scratch``) or folder."""
    if source.is_dir():
        for path in sorted(source.rglob("*.pth")):
            match = MEMBER.search(path.relative_to(source).as_posix())
            if match:
                yield Found(path.relative_to(source).as_posix(), match["arch"], path)
        return
    if not tarfile.is_tarfile(source):
        raise ValueError(f"{source} is neither a folder nor a tar archive")
    try:
        with tarfile.open(source) as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                match = MEMBER.search(member.name)
                if not member.isfile() or not match:
                    continue
                target = scratch / f"{len(list(scratch.iterdir()))}.pth"
                with archive.extractfile(member) as handle, open(target, "wb") as out:  # type: ignore[union-attr]
                    out.write(handle.read())
                yield Found(member.name, match["arch"], target)
    except (tarfile.TarError, EOFError, zlib.error) as error:  # truncated or corrupt
        raise ValueError(f"{source}: a damaged archive ({error or type(error).__name__})") from None


def load_teacher(found: Found, num_classes: int):
    """(model with the checkpoint strictly loaded, the original file's sha256)."""
    from wkd_core.models import create_model, load_checkpoint_into

    model = create_model(found.arch, num_classes=num_classes)
    load_checkpoint_into(model, found.path)
    return model, file_sha256(found.path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def import_teachers(args: argparse.Namespace) -> int:
    """The ``wkd teachers import`` handler: register locally or upload to ``--url``."""
    from service import catalog
    from wkd_core.data import dataset_info

    num_classes = dataset_info(args.dataset).num_classes
    source = Path(args.path).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"{source} does not exist (cifar_teachers.tar comes from the `checkpoints` release "
            "of github.com/megvii-research/mdistiller)"
        )
    done, skipped = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for found in iter_checkpoints(source, Path(scratch)):
            if found.arch not in catalog.ARCHITECTURES:
                skipped.append(f"{found.member}: architecture {found.arch!r} is not in the catalog")
                continue
            model, original_sha = load_teacher(found, num_classes)
            entry = {
                "arch": found.arch,
                "dataset": args.dataset,
                "num_classes": num_classes,
                "source": f"{source.name}:{found.member}",
                "source_sha256": original_sha,
            }
            if args.url:
                entry["checkpoint_id"] = upload(model, entry, args.url, api_key(args))
            else:
                entry.update(register(model, entry, registry_dir(args.registry)))
            done.append(entry)
            where = entry.get("checkpoint_id") or entry["path"]
            print(f"{args.dataset}/{found.arch}: {where}")
    for line in skipped:
        print(f"skipped {line}")
    if not done:
        raise ValueError(f"no <arch>_vanilla/*.pth checkpoint found in {source}")
    if not args.url:
        print(f"{len(done)} teachers registered in {registry_dir(args.registry)}")
    return 0


def register(model, entry: dict[str, Any], registry: Path) -> dict[str, Any]:
    """Save the weights as safetensors under ``registry`` and record them in the index."""
    from wkd_core.artifacts import save_student

    name = f"{entry['dataset']}/{entry['arch']}"
    path = registry / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_student(model, path, metadata={"source": entry["source"]})
    record = {**entry, "path": str(path), "sha256": file_sha256(path)}
    index = read_index(registry)
    index[name] = record
    (registry / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return record


def read_index(registry: Path) -> dict[str, dict[str, Any]]:
    """The registry's records by name; a ``ValueError`` naming the file when it is not one."""
    path = registry / INDEX
    if not path.exists():
        return {}
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a teachers registry ({error})") from None
    fields = ("arch", "num_classes", "path")
    if not isinstance(index, dict) or not all(
        isinstance(r, dict) and all(k in r for k in fields) for r in index.values()
    ):
        raise ValueError(f"{path}: not a teachers registry (each name maps to {', '.join(fields)})")
    return index


def resolve_registered(name: str, registry: str | None = None) -> dict[str, Any] | None:
    """The registry record of ``name`` (``cifar100/resnet32x4``), if it is registered."""
    return read_index(registry_dir(registry)).get(name)


def api_key(args: argparse.Namespace) -> str:
    key = args.key or os.environ.get("WKD_API_KEY")
    if not key:
        raise ValueError("uploading needs an API key: pass --key or set WKD_API_KEY")
    return key


def upload(model, entry: dict[str, Any], url: str, key: str) -> str:
    """``POST /checkpoints`` the weights as safetensors; returns the checkpoint id."""
    import httpx
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files = {"file": (f"{entry['arch']}.safetensors", save(state), "application/octet-stream")}
    data = {"arch": entry["arch"], "num_classes": str(entry["num_classes"])}
    try:
        response = httpx.post(
            url.rstrip("/") + "/checkpoints", data=data, files=files, timeout=300,
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise ValueError(f"cannot reach {url}: {error or type(error).__name__}") from None
    if response.status_code != 201:
        raise ValueError(
            f"upload of {entry['arch']} failed: {response.status_code} {response.text}"
        )
    return response.json()["id"]


def list_teachers(args: argparse.Namespace) -> int:
    """The ``wkd teachers list`` handler: one line per registered teacher."""
    index = read_index(registry_dir(args.registry))
    if not index:
        print(f"no teachers registered in {registry_dir(args.registry)}")
    for name, record in sorted(index.items()):
        print(f"{name}  {record['arch']}  {record['num_classes']} classes  {record['path']}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``wkd teachers import PATH`` and ``wkd teachers list``."""
    teachers = sub.add_parser("teachers", help="import pre-trained teachers (cifar_teachers.tar)")
    teachers_sub = teachers.add_subparsers(dest="teachers_command", required=True)
    imp = teachers_sub.add_parser("import", help="register or upload every teacher in an archive")
    imp.add_argument("path", help="mdistiller's cifar_teachers.tar, or the folder it unpacks to")
    imp.add_argument("--dataset", default="cifar100", help="what they were trained on")
    imp.add_argument(
        "--registry", default=None, help="default: $WKD_TEACHERS_DIR or ~/.wkd/teachers"
    )
    imp.add_argument(
        "--url", default=None, help="upload to this service instead (POST /checkpoints)"
    )
    imp.add_argument("--key", default=None, help="API key for --url (default: $WKD_API_KEY)")
    imp.set_defaults(handler=import_teachers)
    listing = teachers_sub.add_parser("list", help="the registered teachers")
    listing.add_argument("--registry", default=None)
    listing.set_defaults(handler=list_teachers)
