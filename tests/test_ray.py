"""``hydra/launcher=ray`` on a real Ray cluster of this machine: started for the module (``ray start --head`` in a
temporary directory, on a free port, 2 CPUs, a 75 MiB object store) and stopped after it. Each job runs as a Ray task,
its result the basic launcher's, and a failing job fails alone. Skipped without ray (``pip install 'tlexp[ray]'``).

Bad settings, a missing ``ray`` and a cluster that does not answer are checked in this process, without a cluster: one
error line, exit status 1, no sweep directory."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra_plugins.tlexp_launchers.ray_launcher as ray_launcher

import pytest
from omegaconf import OmegaConf

from conftest import NO_REPORT, REPO, read_json, run_train, subprocess_env

RAY_STARTED = "Ray runtime started"
JOB = ("seed=0", "trainer.max_epochs=1", NO_REPORT)


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head node, its address; stopped by killing its process group (``ray stop`` would stop every Ray of the
    machine). Its temporary directory is short: Ray's socket paths must fit in 107 characters."""
    pytest.importorskip("ray", reason="no ray (pip install 'tlexp[ray]')")
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="tlexp-ray-"))
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))  # the workers import tlexp
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
               "--num-gpus=0", f"--temp-dir={home}", "--object-store-memory=78643200", "--include-dashboard=false",
               "--disable-usage-stats"]
    log = home / "ray-start.log"
    with log.open("w") as out:
        head = subprocess.Popen(command, env=subprocess_env(PYTHONPATH=path), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while RAY_STARTED not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not start (exit {head.poll()}): {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused(main_inprocess, tmp_path, *overrides: str) -> str:
    """The error line of a Ray sweep of two jobs that ends before any job starts; no sweep directory written."""
    code, output = main_inprocess(tmp_path / "run", "hydra.mode=MULTIRUN", "hydra/launcher=ray", "seed=0,1",
                                  f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides)
    errors = [line for line in output.splitlines() if line.startswith("tlexp: error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "run").exists()
    return errors[0]


@pytest.mark.parametrize("override, accepted", [
    ("hydra.launcher.num_cpus=0", "a number of CPUs > 0"), ("hydra.launcher.num_cpus=two", "a number of CPUs > 0"),
    ("hydra.launcher.num_gpus=-1", "a number of GPUs >= 0"), ("hydra.launcher.num_gpus=0.00001", "fractions down to 0.0001"),
    ("hydra.launcher.address=local", "auto (the cluster `ray start --head` runs on this machine) or host:port"),
    ("hydra.launcher.address=head-node", "or host:port"), ("hydra.launcher.address=ray://head-node:10001", "Ray Client"),
])
def test_bad_ray_settings_are_named(tmp_path, main_inprocess, override, accepted):
    """Checked before Ray is imported or joined: the key, the value and what it accepts."""
    line = refused(main_inprocess, tmp_path, override)
    assert f"{override.split('=')[0]}=" in line and "is not accepted; accepted:" in line and accepted in line, line


def test_no_ray_installed(tmp_path, main_inprocess, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert refused(main_inprocess, tmp_path) == ("tlexp: error: hydra/launcher=ray needs Ray, which is not installed: "
                                                 "pip install 'tlexp[ray]'")


def test_no_cluster_at_the_address(tmp_path, main_inprocess):
    """A closed port: refused at once, where ``ray.init`` would retry for about 14 minutes."""
    pytest.importorskip("ray", reason="no ray (pip install 'tlexp[ray]')")
    port = free_port()
    started = time.monotonic()
    line = refused(main_inprocess, tmp_path, f"hydra.launcher.address=127.0.0.1:{port}")
    assert time.monotonic() - started < ray_launcher.PROBE_SECONDS + 10
    assert line.startswith(f"tlexp: error: hydra.launcher.address='127.0.0.1:{port}': no Ray cluster answered at ")
    assert f":{port} (Connection refused); {ray_launcher.START_ONE}" in line, line


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in sweep_dir.glob("*/result.json")}


@pytest.mark.slow
def test_ray_launcher_runs_each_job_as_a_ray_task(ray_cluster, tmp_path, main_inprocess):
    """Two jobs on the cluster, one with a bad ``data.fraction``: both run as Ray tasks (Hydra's job id is the task's,
    the job's pid is a Ray worker's, whose output Ray prefixes with its pid); the good one ends as under the basic
    launcher (driven from train.py's entry point in this process) with the same seed; the bad one fails alone, listed
    as failed in sweep_summary.json."""
    on_ray = run_train(tmp_path / "ray", *JOB, "data.fraction=0.5,2", "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster}",
                       multirun=True, check=False)
    assert on_ray.returncode == 0, on_ray.stdout[-6000:]
    assert "Ray launcher: 2 jobs" in on_ray.stdout
    jobs = records(tmp_path / "ray")
    assert sorted(r["status"] for r in jobs.values()) == ["completed", "failed"], jobs
    for name, record in jobs.items():
        hydra_job = OmegaConf.load(tmp_path / "ray" / name / ".hydra" / "hydra.yaml").hydra.job
        assert re.fullmatch(r"[0-9a-f]{48}", str(hydra_job.id)), hydra_job.id  # a Ray TaskID
        assert f"(_run_job pid={record['pid']}" in on_ray.stdout, record["pid"]
    summary = read_json(tmp_path / "ray" / "sweep_summary.json")
    assert summary["counts"]["completed"] == 1 and summary["counts"]["failed"] == 1
    assert "data.fraction=2" in summary["failed"][0]["job"] and "data.fraction" in summary["failed"][0]["error"]

    code, output = main_inprocess(tmp_path / "basic", *JOB, "data.fraction=0.5", "hydra.mode=MULTIRUN",  # the basic launcher
                                  f"hydra.sweep.dir={tmp_path / 'basic'}")
    assert code == 0, output[-4000:]
    [basic] = records(tmp_path / "basic").values()
    [ray_job] = [r for r in jobs.values() if r["status"] == "completed"]
    for key in ("test_acc", "val_acc_best", "val_acc_final", "train_size", "seed"):
        assert ray_job[key] == basic[key], key
