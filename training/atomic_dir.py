"""Writing a directory all at once: files go into a hidden temporary sibling that is renamed
into place when complete, so readers see the old directory or the new one, never a mix,
and a failure leaves nothing half-written behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to `out_dir`; on leaving the block without
    an error it replaces `out_dir` (which may exist), otherwise it is deleted."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same file system, so the final rename is atomic; made with
    # os.mkdir (not mkdtemp's 0700) so the result gets the usual umask permissions.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: dict) -> None:
    """`data` as JSON, one top-level key a line (readable, and a long list stays on one
    line), flushed to disk before returning."""
    lines = (f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in data.items())
    with path.open("w", encoding="utf-8") as file:
        file.write("{\n" + ",\n".join(lines) + "\n}\n")
        file.flush()
        os.fsync(file.fileno())


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    # A directory cannot be renamed over a non-empty one: move the old one aside first.
    # A crash between the two renames leaves no out_dir, never a mix of old and new files.
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "data")
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
