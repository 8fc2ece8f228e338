"""Cache files: ``<cache_dir>/<key>.pt``, written atomically, computed once under a lock.

Concurrent jobs (a parallel sweep, or sweeps on several nodes sharing the directory) compute
a missing key once: the job that computes holds an exclusive ``fcntl.flock`` on
``<key>.pt.lock``; the others wait for it (one info log line) and then load its file. The
kernel drops the lock when its process ends, crashed or killed, so there are no stale locks;
the empty lock files stay in the directory (removing one while a job waits on it would let a
third job compute beside the first). Files are written under a temporary name and renamed, so
a reader sees a complete file or none. Without ``fcntl`` (Windows), or on a filesystem without
locking (e.g. Lustre mounted without ``flock``; NFS with ``local_lock=flock`` locks per node only),
jobs that start together may each compute the same features; the results are still correct.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

import torch

from tlexp.trusted_files import load_tensors

try:
    import fcntl
except ImportError:  # not POSIX: no lock, see the module docstring
    fcntl = None

log = logging.getLogger("tlexp")


def save(path: Path, payload: dict) -> None:
    """Write atomically, so concurrent jobs of a sweep never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and a random part: jobs on other nodes of a shared filesystem can have the same pid
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path, key: str, mmap: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(features, labels) stored at ``path`` under ``key``; None when missing, unreadable or another key's.
    ``mmap``: the tensors stay on disk, paged in as they are read (caches larger than memory)."""
    try:
        payload = load_tensors(path, "feature cache file", mmap=mmap)
    except FileNotFoundError:
        return None
    except Exception as error:  # a corrupt, foreign or untrusted file (UntrustedFile): compute again and overwrite it
        log.warning("feature cache: ignoring unreadable %s (%s)", path, error)
        return None
    if payload.get("key") != key:
        return None
    return payload["features"], payload["labels"]


@contextlib.contextmanager
def computing(path: Path | None):
    """Hold an exclusive lock on ``<path>.lock`` while computing the features stored at ``path``.

    Waits (with one info log line) while another process holds it. ``flock`` locks are released
    by the kernel when the process ends, however it ends. No lock for an in-memory cache, without
    ``fcntl`` (debug log) or where the filesystem refuses locks (warning): the atomic ``save``
    keeps concurrent jobs correct, they may only compute the same features twice.
    """
    if path is None or fcntl is None:
        if path is not None:
            log.debug("feature cache: no fcntl on this platform, computing %s without a lock", path)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:  # writable: NFS emulates flock with fcntl locks
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another job computing the feature cache %s", path)
                fcntl.flock(lock, fcntl.LOCK_EX)
            locked = True
        except OSError as error:  # e.g. ENOLCK/ENOSYS: a network filesystem without lock support
            log.warning("feature cache: cannot lock %s (%s), computing without a lock", lock.name, error)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(lock, fcntl.LOCK_UN)  # also if a forked child still holds the file open
