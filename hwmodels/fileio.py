"""Atomic file writes. Every file clusterplan writes (DES traces, profiles, run folders) appears
whole or not at all: the text goes to a temporary file beside its destination, which is then
renamed over it (rename is atomic on POSIX). A path that cannot be written is a one-line InputError.
"""
from __future__ import annotations

import json
import os
import tempfile

from hwmodels.errors import InputError


def write_text_atomic(path, text: str) -> None:
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise InputError(f"cannot write {path!r}: directory {d!r} does not exist")
    if os.path.isdir(path):
        raise InputError(f"cannot write {path!r}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.splitext(path)[1] or ".tmp")
    except OSError as e:
        raise InputError(f"cannot write {path!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise InputError(f"cannot write {path!r}: {e.strerror or e}") from None
        raise


def write_json_atomic(path, doc, **dump_kw) -> None:
    """json.dumps(doc, **dump_kw), written atomically (a trailing newline when indented)."""
    text = json.dumps(doc, **dump_kw)
    write_text_atomic(path, text + ("\n" if dump_kw.get("indent") is not None else ""))
