"""Job messages as users see them: no tracebacks, no server paths.

The worker stores short messages (``jobs.message``) and keeps tracebacks in its own logs;
this is the guarantee on top, applied wherever the API shows a message (a job, the jobs
list, the event stream): a traceback is cut off, and the service's folders and any other
absolute path become ``<server path>``.
"""

from __future__ import annotations

import re

from service.settings import Settings

__all__ = ["SERVER_PATH", "message_roots", "public_message"]

SERVER_PATH = "<server path>"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+@-]+/)+[\w.+@-]*")
_TRACEBACK = "Traceback (most recent call last)"


def message_roots(settings: Settings) -> tuple[str, ...]:
    """The service's folders as they may appear in a message: as configured (a relative
    ``WKD_DATA_DIR`` such as the default ``.wkd`` stays relative in paths built from it) and
    absolute; longest first, so that a folder inside another is replaced whole."""
    folders = [settings.data_dir, settings.artifact_dir, settings.checkpoint_dir,
               settings.dataset_root, settings.cache_dir]  # fmt: skip
    names = {str(f) for f in folders if f} | {str(f.absolute()) for f in folders if f}
    return tuple(sorted((n for n in names if n not in ("", ".", "/")), key=len, reverse=True))


def public_message(message: str | None, roots: tuple[str, ...] = ()) -> str | None:
    """``message`` without a traceback, with ``roots`` (see :func:`message_roots`) and every
    other absolute path replaced by ``<server path>``."""
    if not message:
        return message
    text = message.split(_TRACEBACK, 1)[0].rstrip() or "the job failed (details in the log)"
    for root in roots:
        # the folder itself or a path under it, not a longer name that starts the same way
        pattern = rf"(?<![\w.+@/-]){re.escape(root)}(?:/[\w.+@-]*)*(?![\w.+@-])"
        text = re.sub(pattern, SERVER_PATH, text)
    return _ABSOLUTE_PATH.sub(SERVER_PATH, text)
