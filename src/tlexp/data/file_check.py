"""Which files of an image folder can be trained on, decided once at setup instead of by a crash mid-run.

A file is left out when it is hidden (``.DS_Store``, macOS ``._*`` forks), has no image extension
(``.txt``, ``Thumbs.db``) or does not decode with ``load_rgb`` (zero bytes, truncated, not an image
inside). Decoding is the whole file, not ``Image.verify``, because truncation only shows then.

Files decode in a thread pool (PIL releases the GIL while decoding). Files that decoded are
remembered by (path relative to the root, size, mtime) in ``.tlexp-file-check.json`` in the dataset
root, so later runs and the other jobs of a sweep only decode new or changed files; when the root
is not writable, in ``$XDG_CACHE_HOME/tlexp/file_check/`` (default ``~/.cache``) under a name
derived from the root. Failures are not remembered: the few bad files are decoded
again each run, so a fixed permission or a passing read error needs no cache invalidation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tlexp.data.images import load_rgb

log = logging.getLogger("tlexp")

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FORMAT = 1
"""Bump when ``load_rgb`` accepts or rejects differently, so old cache files are not trusted."""

CACHE_NAME = ".tlexp-file-check.json"


def not_an_image(path: Path) -> str | None:
    """Why ``path`` is not even a candidate image (None when it is one); costs no I/O."""
    if path.name.startswith("."):
        return "hidden file"
    if path.suffix.lower() not in EXTENSIONS:
        return f"not an image file ({path.suffix or 'no extension'})"
    return None


def cache_file(root: Path) -> Path:
    """Where the check of ``root`` is remembered: in the root itself when writable, else per user."""
    if os.access(root, os.W_OK):
        return root / CACHE_NAME
    digest = hashlib.blake2b(str(root).encode(), digest_size=8).hexdigest()
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "tlexp" / "file_check" / f"{root.name}-{digest}.json"


def read_cache(file: Path) -> dict[str, list[int]]:
    """Remembered (size, mtime) stamps by relative path; an unreadable or outdated file is no cache."""
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return saved["files"] if saved.get("format") == FORMAT else {}


def write_cache(file: Path, root: Path, files: dict[str, list[int]]) -> None:
    """Replace ``file`` atomically: the other jobs of a sweep may read or write it at the same time."""
    temporary = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump({"format": FORMAT, "root": str(root), "files": files}, out)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from the other users of a shared dataset
        os.replace(temporary, file)
    except OSError as error:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        log.info("could not write the image check cache %s (%s): the next run decodes every file again", file, error)


def stamp(path: Path) -> list[int] | None:
    """(size, mtime in ns): what a file's cache entry must match; None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def decode_error(path: Path) -> str | None:
    """Why ``load_rgb`` cannot decode ``path`` (None when it can)."""
    try:
        load_rgb(path)
    except Exception as error:  # whatever a decoder raises, the file cannot be trained on
        message = " ".join(str(error).replace(repr(str(path)), "").split())  # the path is listed beside it
        return f"{type(error).__name__}: {message}"
    return None


def decode_failures(paths: list[Path], root: Path) -> dict[Path, str]:
    """The files of ``paths`` (all under ``root``) that do not decode, with the reason.

    Only files without a matching cache entry are decoded; the stamp is taken before decoding, so a
    file changed meanwhile is decoded again next time.
    """
    names = [path.relative_to(root).as_posix() for path in paths]
    file = cache_file(root.absolute())
    known = read_cache(file)
    stamps = [stamp(path) for path in paths]
    todo = [i for i, (name, now) in enumerate(zip(names, stamps)) if now is None or known.get(name) != now]
    started = time.perf_counter()
    with ThreadPoolExecutor() as pool:
        errors = dict(zip(todo, pool.map(decode_error, [paths[i] for i in todo])))
    good = {name: now for i, (name, now) in enumerate(zip(names, stamps)) if errors.get(i) is None and now is not None}
    if good != known:
        write_cache(file, root.absolute(), good)
    log.info("checked %d image files: %d decoded in %.1f s, %d unchanged since the cached check",
             len(paths), len(todo), time.perf_counter() - started, len(paths) - len(todo))
    return {paths[i]: error for i, error in errors.items() if error is not None}
