"""The ``wkd`` command line: a thin client of ``wkd_core`` and the service.

Every command imports what it needs inside its handler, so ``wkd --help`` stays fast and the
service commands never load torch. Errors a user can fix (unknown model, missing data, a
teacher that does not match) print one line and exit with status 2; any other error prints
one line too, with its type, and exits with status 1 (``WKD_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from cli import commands, inputs, remote, study, teachers

EXIT_USAGE = 2  # an input the user can fix
EXIT_FAILURE = 1  # anything else


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``distill``."""
    parser.add_argument("--out", default=None, help="output folder (default: runs/<name>)")
    parser.add_argument("--data-root", default=None, help="dataset root (cifar, imagefolder)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: auto)")
    parser.add_argument("--cache-dir", default=None, help="interrelation cache (default: <out>/..)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set training.epochs=2 --set params.temperature=4",
    )
    parser.add_argument(
        "--student-init",
        metavar="PATH",
        help="the student's initial weights (.pth, .pt, .safetensors): the whole student, or "
        "an ImageNet classifier for a detector's backbone; add --set "
        "student.init.backbone_only=true to load all but the classifier / only the backbone",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--download", action="store_true", help="fetch CIFAR-10/100 into --data-root if missing"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wkd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a teacher or a vanilla student (no teacher)")
    train.add_argument("--arch", required=True, help="architecture name (see `wkd list models`)")
    train.add_argument("--dataset", required=True, help="dataset name (see `wkd list datasets`)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--train-subset-per-class", type=int, default=None)
    add_run_options(train)
    train.set_defaults(handler=commands.train)

    distill = sub.add_parser("distill", help="distill a student from a preset or a YAML job file")
    distill.add_argument("job", nargs="?", help="YAML job file (the JobSpec of POST /jobs)")
    distill.add_argument("--preset", help="a released configuration (see `wkd list presets`)")
    distill.add_argument("--method", help="vanilla, kd, dkd, fitnet, wkd_l, wkd_f, wkd_lf")
    distill.add_argument(
        "--teacher",
        help="teacher checkpoint (.pth, .pt or .safetensors) or a registered name "
        "(`wkd teachers list`, e.g. cifar100/resnet32x4)",
    )
    distill.add_argument("--teacher-arch", help="teacher architecture (else the spec's)")
    distill.add_argument("--student", help="student architecture (else the spec's)")
    distill.add_argument("--dataset", help="dataset name (else the spec's)")
    add_run_options(distill)
    distill.set_defaults(handler=commands.distill)

    ir = sub.add_parser("ir", help="compute and save a class-interrelation distance matrix")
    ir.add_argument("--teacher", required=True, help="teacher checkpoint")
    ir.add_argument("--arch", required=True, help="teacher architecture")
    ir.add_argument("--dataset", required=True)
    ir.add_argument("--data-root", default=None)
    ir.add_argument(
        "--out",
        default=None,
        help="output file, a C×C tensor of D = 1 − IR "
        "(default: runs/ir/<dataset>-<arch>-<source>.pt)",
    )
    ir.add_argument("--source", default="cka", help="cka, fc or centroid")
    ir.add_argument("--kernel", default="linear", help="linear, poly or rbf (CKA kernel)")
    ir.add_argument("--feature", default="auto", help="features, logits or auto")
    ir.add_argument("--max-per-class", type=int, default=None)
    ir.add_argument("--train-subset-per-class", type=int, default=None)
    ir.add_argument("--device", default="auto")
    ir.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root")
    ir.set_defaults(handler=commands.interrelations)

    teachers.add_parser(sub)
    study.add_parser(sub)

    listing = sub.add_parser("list", help="list models, datasets, methods or presets")
    listing.add_argument("what", choices=["models", "datasets", "methods", "presets"])
    listing.set_defaults(handler=commands.listing)

    serve = sub.add_parser("serve", help="run the API and one worker on embedded defaults")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=inputs.port_number, default=8000, help="1 … 65535")
    serve.add_argument("--data-dir", default=None, help="everything lives here (default .wkd)")
    serve.set_defaults(handler=commands.serve)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--data-dir",
        default=None,
        help="as for `wkd serve`: its SQLite database (unless a URL is set)",
    )
    create.add_argument(
        "--database-url",
        default=None,
        help="the database to write to (default: WKD_DATABASE_URL, else the "
        "data dir's SQLite); PostgreSQL must be migrated already",
    )
    create.set_defaults(handler=commands.create_key)
    listing = keys_sub.add_parser("list", help="list the keys (id, prefix, created, revoked)")
    listing.add_argument("--data-dir", default=None, help="as for `wkd serve`")
    listing.add_argument("--database-url", default=None, help="as for `wkd keys create`")
    listing.set_defaults(handler=commands.list_keys)
    revoke = keys_sub.add_parser("revoke", help="revoke a key: refused from its next request")
    revoke.add_argument("key", help="the key's id (key_…) or its shown prefix (wkd_…)")
    revoke.add_argument("--data-dir", default=None, help="as for `wkd serve`")
    revoke.add_argument("--database-url", default=None, help="as for `wkd keys create`")
    revoke.set_defaults(handler=commands.revoke_key)

    remote.add_commands(sub)  # submit, status, watch, jobs, cancel, download, upload-teacher
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args) or 0
    except KeyboardInterrupt:
        print("wkd: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line for errors a user can act on
        if inputs.is_user_error(error):
            print(f"wkd: error: {inputs.describe_error(error)}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("WKD_DEBUG"):
            raise
        # Not an input we recognise as wrong: still one line (the type says where to look),
        # and the traceback on request.
        print(f"wkd: error: {type(error).__name__}: {inputs.describe_error(error)} "
              "(WKD_DEBUG=1 shows the traceback)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
