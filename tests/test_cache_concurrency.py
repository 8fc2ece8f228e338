"""The feature cache shared by concurrent processes: computed once under a lock, never read half-written.

Two worker processes ('spawn', started once for the module: imports cost ~10 s here) stand for two
jobs of a sweep that need the same cache key at the same moment.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from tlexp.feature_cache import Boundary, dataset, store

SEED = 3
HOLD = 1.0
"""Seconds the computing process keeps computing once the other one is seen waiting."""

_sync: dict = {}  # the worker's synchronisation primitives, from the pool initializer


# --- in the worker processes --------------------------------------------------------------------------
def _init(sync: dict) -> None:
    torch.set_num_threads(1)
    _sync.update(sync)
    import timm  # noqa: F401  (imported here, once, rather than in the first task)
    import tlexp.backbone  # noqa: F401
    import tlexp.data  # noqa: F401


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())
        if record.getMessage().startswith("waiting for another job computing the feature cache"):
            _sync["waiting"].set()


def _job(cache_dir: str) -> dict:
    """One job: the tiny backbone's pooled val features through ``split_inputs``, computing held >= HOLD s."""
    from tlexp.backbone import create_backbone
    from tlexp.data import Synthetic

    torch.manual_seed(SEED)
    backbone = create_backbone("test_efficientnet")
    datamodule = Synthetic(image_size=32, val_size=32, batch_size=32, seed=SEED).prepare_for(backbone)

    computes = []
    real = dataset.compute_features

    def compute(*args, **kwargs):
        start = time.time()
        # keep computing until the other job is seen blocked on the lock (without a lock it never
        # is: both compute, overlapping), then a little longer
        _sync["waiting"].wait(timeout=15)
        time.sleep(HOLD)
        result = real(*args, **kwargs)
        computes.append((start, time.time()))
        return result

    handler = _Collect()
    logger = logging.getLogger("tlexp")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    dataset.compute_features = compute
    try:
        _sync["barrier"].wait(timeout=60)  # both jobs ask for the key at the same moment
        inputs, report = dataset.split_inputs(Boundary.pooled(backbone), datamodule, "val", cache_dir)
    finally:
        dataset.compute_features = real
        logger.removeHandler(handler)
    return {"report": {"val": report}, "computes": computes, "messages": handler.messages,
            "features": inputs.features, "labels": inputs.labels}


def _payload(version: int) -> dict:
    return {"key": "k", "features": torch.full((512, 512), float(version)), "labels": torch.full((512,), version)}


def _writer(path: str, seconds: float) -> int:
    """Rewrite ``path`` with new versions for ``seconds``; returns how many."""
    version, end = 1, time.monotonic() + seconds
    while time.monotonic() < end:
        store.save(Path(path), _payload(version))
        version += 1
    return version - 1


# --- the tests ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_workers():
    context = multiprocessing.get_context("spawn")
    sync = {"barrier": context.Barrier(2), "waiting": context.Event()}
    with context.Pool(2, initializer=_init, initargs=(sync,)) as pool:
        yield pool, sync


@pytest.mark.slow
def test_two_processes_compute_a_key_once(cache_workers, tmp_path):
    pool, sync = cache_workers
    sync["waiting"].clear()
    jobs = [pool.apply_async(_job, (str(tmp_path),)) for _ in range(2)]
    results = [job.get(timeout=120) for job in jobs]

    computed = [r for r in results if r["computes"]]
    loaded = [r for r in results if not r["computes"]]
    assert len(computed) == 1 and len(loaded) == 1, [r["computes"] for r in results]
    (start, end), = computed[0]["computes"]
    assert end - start >= HOLD
    assert computed[0]["report"]["val"]["hit"] is False and loaded[0]["report"]["val"]["hit"] is True
    # the loader waited on the lock (one info line) and loaded the computer's file
    waits = [m for m in loaded[0]["messages"] if m.startswith("waiting for another job computing the feature cache")]
    path = computed[0]["report"]["val"]["path"]
    assert waits == [f"waiting for another job computing the feature cache {path}"]
    assert not any(m.startswith("waiting") for m in computed[0]["messages"])
    assert torch.equal(results[0]["features"], results[1]["features"])
    assert torch.equal(results[0]["labels"], results[1]["labels"])
    # one cache file, its lock file (left on disk, empty), no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{computed[0]['report']['val']['key']}.pt",
                                                                 f"{computed[0]['report']['val']['key']}.pt.lock"])
    assert (tmp_path / f"{computed[0]['report']['val']['key']}.pt.lock").stat().st_size == 0


@pytest.mark.slow
def test_a_reader_never_sees_a_half_written_file(cache_workers, tmp_path, monkeypatch, caplog):
    pool, _ = cache_workers
    path = tmp_path / "k.pt"
    store.save(path, _payload(0))

    # temp-then-rename: while the data is written, the final name still holds the previous version
    real_save = torch.save

    def checked_save(payload, target):
        assert target != path and store.load(path, "k")[0][0, 0] == 0
        real_save(payload, target)

    monkeypatch.setattr(torch, "save", checked_save)
    store.save(path, _payload(0))
    monkeypatch.undo()

    # another process rewrites the file while this one reads it: every read is one complete version
    writer = pool.apply_async(_writer, (str(path), 1.5))
    versions = set()
    with caplog.at_level(logging.WARNING, logger="tlexp"):
        while not writer.ready():
            loaded = store.load(path, "k")
            assert loaded is not None  # a partial file would be unreadable: None with a warning
            features, labels = loaded
            version = int(labels[0])
            assert features.shape == (512, 512) and torch.equal(features, torch.full((512, 512), float(version)))
            assert torch.equal(labels, torch.full((512,), version))
            versions.add(version)
    written = writer.get(timeout=60)
    assert written > 1 and len(versions) > 1, (written, versions)  # really concurrent
    assert "ignoring unreadable" not in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["k.pt"]  # no temporary files left


def test_without_fcntl_computes_without_a_lock(tmp_path, monkeypatch, caplog):
    from tlexp.backbone import create_backbone
    from tlexp.data import Synthetic

    torch.manual_seed(SEED)
    backbone = create_backbone("test_efficientnet")
    datamodule = Synthetic(image_size=32, val_size=32, batch_size=32, seed=SEED).prepare_for(backbone)
    monkeypatch.setattr(store, "fcntl", None)
    with caplog.at_level(logging.DEBUG, logger="tlexp"):
        _, report = dataset.split_inputs(Boundary.pooled(backbone), datamodule, "val", tmp_path)
    assert report["hit"] is False and "without a lock" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [f"{report['key']}.pt"]
