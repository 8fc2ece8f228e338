"""Files that several processes write in one sweep or race directory (race workers, hosts, a re-run beside the
first): a replace that readers never see half done, and ``flock`` locks, which the kernel drops when the holder
ends however it ends (also on NFS, which emulates them with fcntl locks)."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locks (each process goes ahead)
    fcntl = None


def write_atomic(path: str | Path, text: str) -> Path:
    """``path`` holds ``text`` at once: written beside it, then renamed over it (a reader sees the old file or the
    new one, and of two writers at once the last rename wins whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # hosts share pids
    partial.write_text(text)
    os.replace(partial, path)
    return path


@contextmanager
def claimed(path: Path, wait: bool = False):
    """True while this process holds ``path``'s lock: taken if free, else False; with ``wait``, taken once the
    holder lets go (always True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield True
        return
    with open(path, "a") as handle:  # writable: NFS emulates flock with fcntl locks
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
