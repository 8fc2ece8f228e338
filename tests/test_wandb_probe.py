"""W&B credentials but no server that answers (a cluster node without internet): mode auto and online probe
the server and log offline with one warning instead of failing in wandb.init; a sweep probes once, in the
launching process. Every server here is on the loopback: a port that refuses, a socket that accepts and
never answers, a small HTTP server. Also the logger config: its _target_ nodes built into the run directory."""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from lightning.pytorch.loggers import CSVLogger

from conftest import compose_config, read_json, run_train
from tlexp import loggers
from tlexp.errors import ConfigError, InvalidValue
from tlexp.loggers import (UNREACHABLE_ENV, FallbackWandbLogger, build_loggers, probe_wandb_server, resolve_wandb_mode,
                           wandb_base_url)

DUMMY_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, like a W&B API key
WARNING = "did not answer"
TRAIN = ("logger=wandb", "trainer.max_epochs=1", "test=false")  # train.py runs: W&B is all that matters here


@contextlib.contextmanager
def refusing_url():
    """A loopback URL whose port refuses connections: bound to learn a free port, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def silent_server():
    """A loopback URL whose server accepts connections and never answers. Yields (url, connections):
    [accepted at, closed by the client at] per connection, in perf_counter seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    connections: list[list[float | None]] = []
    accepted: list[socket.socket] = []

    def hold(conn: socket.socket, times: list) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(4096):  # read the request, answer nothing, until the client hangs up
                pass
            times[1] = time.perf_counter()

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
                connections.append([time.perf_counter(), None])
                threading.Thread(target=hold, args=(conn, connections[-1]), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


@contextlib.contextmanager
def http_server(status: int):
    """A loopback HTTP server answering every GET with ``status``."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def credentials(monkeypatch, tmp_path):
    """An API key, no WANDB_MODE, no earlier probe verdict, no W&B settings files. Returns a function
    that points W&B at a server."""
    monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    for name in ("WANDB_MODE", "WANDB_BASE_URL", UNREACHABLE_ENV):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores what the test changes
        monkeypatch.delenv(name)
    return lambda url: monkeypatch.setenv("WANDB_BASE_URL", url)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tlexp" and r.levelno == logging.WARNING]


def timed_resolve(mode: str, timeout: float, sync_dir) -> tuple[str, float]:
    started = time.perf_counter()
    resolved = resolve_wandb_mode({"mode": mode, "probe_timeout": timeout}, sync_dir)
    return resolved, time.perf_counter() - started


@pytest.mark.parametrize("mode", ["auto", "online"])
def test_refused_port_falls_back_offline_at_once_with_one_warning(credentials, caplog, tmp_path, mode):
    with refusing_url() as url:
        credentials(url)
        resolved, seconds = timed_resolve(mode, 10, tmp_path)
        again, seconds_again = timed_resolve(mode, 10, tmp_path)  # the verdict holds; no new probe
    assert (resolved, again) == ("offline", "offline")
    assert seconds < 3 and seconds_again < 0.1, (seconds, seconds_again)
    [warning] = warnings_of(caplog)
    assert f"W&B server at {url} did not answer" in warning and "refused" in warning
    assert f"python scripts/sync_wandb.py {tmp_path}" in warning and "wandb sync" in warning


def test_silent_server_falls_back_offline_within_the_probe_timeout(credentials, caplog, tmp_path):
    with silent_server() as (url, connections):
        credentials(url)
        resolved, seconds = timed_resolve("auto", 1, tmp_path)
    assert resolved == "offline" and len(connections) == 1
    assert 0.9 < seconds < 3, seconds
    [warning] = warnings_of(caplog)
    assert f"W&B server at {url} did not answer (timed out after 1 s)" in warning


@pytest.mark.parametrize("status", [200, 404])
def test_answering_server_is_reachable(credentials, caplog, tmp_path, status):
    """Any HTTP answer counts; the mode stays online (no run is started here)."""
    with http_server(status) as url:
        credentials(url)
        assert probe_wandb_server(url, 2) is None
        assert resolve_wandb_mode({"mode": "auto", "probe_timeout": 2}, tmp_path) == "online"
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(("mode", "wandb_mode", "expected"),
                         [("offline", None, "offline"), ("disabled", None, "disabled"), ("online", "offline", "offline")])
def test_explicit_modes_skip_the_probe(credentials, monkeypatch, tmp_path, mode, wandb_mode, expected):
    monkeypatch.setattr(loggers, "probe_wandb_server", lambda *args: pytest.fail("probed"))
    if wandb_mode:
        monkeypatch.setenv("WANDB_MODE", wandb_mode)
    assert resolve_wandb_mode({"mode": mode}, tmp_path) == expected


def test_no_credentials_is_offline_without_probe(credentials, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setattr(loggers, "probe_wandb_server", lambda *args: pytest.fail("probed"))
    assert resolve_wandb_mode({"mode": "auto"}, tmp_path) == "offline"


def test_probe_timeout_must_be_positive(credentials, tmp_path):
    with pytest.raises(InvalidValue, match="probe_timeout=0 ") as error:
        resolve_wandb_mode({"mode": "auto", "probe_timeout": 0}, tmp_path)
    assert error.value.name == "probe_timeout"


# --- the logger config: _target_ nodes built into the run directory ----------------------------------------
def logger_cfg(tmp_path, *overrides: str):
    return compose_config(*overrides, f"paths.output_dir={tmp_path}").logger


def test_logger_wandb_builds_csv_and_wandb_with_the_run_facts(tmp_path):
    """logger=wandb: metrics.csv in the run directory, and W&B with the job's name, group and tags."""
    built = build_loggers(logger_cfg(tmp_path, "logger=wandb"), str(tmp_path), "strategy=full", "study", ["full", "x"])
    csv_logger, wandb_logger = built
    assert isinstance(csv_logger, CSVLogger) and Path(csv_logger.log_dir) == tmp_path
    assert isinstance(wandb_logger, FallbackWandbLogger)
    init = wandb_logger._wandb_init
    assert (init["name"], init["group"], init["tags"], init["mode"]) == ("strategy=full", "study", ["full", "x"], "offline")
    assert (init["project"], init["job_type"], init["dir"]) == ("tlexp", "train", str(tmp_path))


def test_logger_csv_is_metrics_csv_only(tmp_path):
    [csv_logger] = build_loggers(logger_cfg(tmp_path, "logger=csv"), str(tmp_path), "run", None, [])
    assert isinstance(csv_logger, CSVLogger) and Path(csv_logger.log_dir) == tmp_path


def test_logger_tensorboard_composes_csv_and_tensorboard(tmp_path):
    cfg = logger_cfg(tmp_path, "logger=tensorboard")
    assert [node._target_ for node in cfg.values()] == ["lightning.pytorch.loggers.CSVLogger",
                                                        "lightning.pytorch.loggers.TensorBoardLogger"]


@pytest.mark.parametrize(("override", "key"), [("logger.wandb.mode=bogus", "logger.wandb.mode"),
                                               ("logger.wandb.probe_timeout=0", "logger.wandb.probe_timeout")])
def test_bad_wandb_setting_names_its_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"^{key}=") as error:
        build_loggers(logger_cfg(tmp_path, "logger=wandb", override), str(tmp_path), "run", None, [])
    assert error.value.key == key


def test_logger_config_without_csv_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="metrics.csv"):
        build_loggers(logger_cfg(tmp_path, "logger=wandb", "~logger.csv"), str(tmp_path), "run", None, [])


def test_base_url_from_environment_then_settings_file(credentials, monkeypatch, tmp_path):
    assert wandb_base_url() == "https://api.wandb.ai"
    settings = tmp_path / "wandb_config" / "settings"
    settings.parent.mkdir()
    settings.write_text("[default]\nbase_url = https://wandb.example.org/\n")
    assert wandb_base_url() == "https://wandb.example.org"
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")
    assert wandb_base_url() == "http://127.0.0.1:1"


def test_failed_wandb_init_goes_on_offline(credentials, monkeypatch, caplog, tmp_path):
    """wandb.init failing online (the server stopped answering after the probe) restarts the run offline."""
    import wandb
    from wandb.errors import CommError

    calls = []

    def init(**kwargs):
        calls.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise CommError("Run initialization has timed out after 60.0 sec.\nPlease try again.")
        return "offline run"

    monkeypatch.setattr(wandb, "init", init)
    credentials("http://127.0.0.1:1")
    logger = FallbackWandbLogger(save_dir=str(tmp_path), project="tlexp", mode="online")
    assert logger.experiment == "offline run" and logger.experiment == "offline run"
    assert calls == ["online", "offline"]
    [warning] = warnings_of(caplog)
    assert "could not start online at http://127.0.0.1:1 (CommError: Run initialization has timed out" in warning
    assert f"python scripts/sync_wandb.py {tmp_path}" in warning


def online_child_env(home: Path, url: str) -> dict:
    """A train.py child with W&B credentials pointed at ``url``: no WANDB_MODE (conftest sets it offline)."""
    return {"HOME": home, "WANDB_API_KEY": DUMMY_KEY, "WANDB_BASE_URL": url, "WANDB_MODE": None, "NETRC": None,
            "WANDB_CONFIG_DIR": None, "WANDB_DIR": None, UNREACHABLE_ENV: None}


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_sweep_probes_once_and_every_job_logs_offline(tmp_path):
    sweep_dir = tmp_path / "sweep"
    with refusing_url() as url:
        result = run_train(sweep_dir, *TRAIN, "strategy=frozen,full", "hydra.sweep.subdir=${hydra.job.num}", multirun=True,
                           env=online_child_env(tmp_path / "home", url), timeout=600)
    assert result.stdout.count(WARNING) == 1, result.stdout[-6000:]
    assert f"python scripts/sync_wandb.py {sweep_dir}" in result.stdout
    for job in ("0", "1"):
        assert read_json(sweep_dir / job / "result.json")["status"] == "completed", result.stdout[-6000:]
        assert len(offline_runs(sweep_dir / job)) == 1, result.stdout[-6000:]
    assert len(offline_runs(sweep_dir)) == 1  # the sweep's summary run
    assert "CommError" not in result.stdout and "Traceback" not in result.stdout


@pytest.mark.slow
def test_single_run_with_a_silent_server_trains_and_logs_offline(tmp_path):
    """The default probe_timeout: the probe's connection is closed by the probe well under 20 s after it opened."""
    run_dir = tmp_path / "run"
    with silent_server() as (url, connections):
        result = run_train(run_dir, *TRAIN, env=online_child_env(tmp_path / "home", url), timeout=600)
    assert result.stdout.count(WARNING) == 1, result.stdout[-6000:]
    assert f"python scripts/sync_wandb.py {run_dir}" in result.stdout
    opened, closed = connections[0]
    assert closed is not None and closed - opened < 20, connections
    assert len(offline_runs(run_dir)) == 1
    assert read_json(run_dir / "result.json")["status"] == "completed" and "Traceback" not in result.stdout
