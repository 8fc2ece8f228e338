"""Experiment loggers, one per ``_target_`` node of ``conf/logger/``, built into the run directory: Lightning's
CSVLogger (``metrics.csv``, in every option), TensorBoardLogger, and W&B (online with credentials and a
server that answers, else offline; never prompts or hangs)."""

from __future__ import annotations

import configparser
import logging
import netrc
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import hydra
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from tlexp import config
from tlexp.errors import ConfigError, InvalidValue

log = logging.getLogger("tlexp")

WANDB_MODES = ("auto", "online", "offline", "disabled")
PROBE_TIMEOUT = 10.0
RUN_FACTS = ("name", "group", "tags")
"""What build_loggers knows of the job and fills in where a logger node leaves the key null."""
UNREACHABLE_ENV = "TLEXP_WANDB_UNREACHABLE"
"""Set to the server's URL once a probe found it unreachable: this process and its children (the jobs of
a sweep, under any launcher) then log offline without probing and warning again."""


def wandb_credentials_present() -> bool:
    """True when W&B can log in without asking: an API key in the environment or in netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        hosts = netrc.netrc(path).hosts if path.is_file() else {}
    except (netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_base_url() -> str:
    """The server wandb.init talks to: WANDB_BASE_URL, else ``base_url`` in the W&B settings files (the
    global one, then ./wandb/settings), else https://api.wandb.ai. Read here rather than through wandb,
    whose settings loader is internal and differs between versions."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"].rstrip("/")
    settings = configparser.ConfigParser(interpolation=None)
    try:
        settings.read([Path(os.environ.get("WANDB_CONFIG_DIR", "~/.config/wandb")).expanduser() / "settings",
                       Path("wandb", "settings")])
    except configparser.Error:  # wandb, too, ignores a broken settings file
        pass
    return settings.get("default", "base_url", fallback="https://api.wandb.ai").rstrip("/")


def probe_wandb_server(base_url: str, timeout: float) -> str | None:
    """None when the server answers ``GET <base_url>/healthz`` within ``timeout`` seconds (any HTTP status
    counts), else why not. The request runs in a daemon thread, so that nothing, not even a DNS lookup,
    keeps the caller waiting longer than ``timeout``. A timeout reads the same whichever of the two clocks
    (the request's socket, the wait for the thread) runs out first: on a busy CPU either can."""
    outcome: list[str | None] = []
    timed_out = f"timed out after {timeout:g} s"

    def request() -> None:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError as error:  # an answer, if not a happy one
            error.close()
            outcome.append(None)
        except Exception as error:  # refused, DNS failure, timeout, TLS failure, not HTTP
            reason = getattr(error, "reason", error)
            outcome.append(timed_out if isinstance(reason, TimeoutError) else str(reason))

    thread = threading.Thread(target=request, name="tlexp-wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else timed_out


def warn_offline(why: str, sync_dir: str | Path) -> None:
    log.warning("%s; logging to W&B offline. Upload later: python scripts/sync_wandb.py %s "
                "(or wandb sync <offline-run dir>)", why, sync_dir)


def wandb_server_answers(timeout: float, sync_dir: str | Path) -> bool:
    """Whether the W&B server answers the probe; a server found unreachable before (UNREACHABLE_ENV)
    counts as unreachable without a new probe."""
    if os.environ.get(UNREACHABLE_ENV):
        return False
    base_url = wandb_base_url()
    reason = probe_wandb_server(base_url, timeout)
    if reason is None:
        return True
    os.environ[UNREACHABLE_ENV] = base_url
    warn_offline(f"the W&B server at {base_url} did not answer ({reason})", sync_dir)
    return False


def resolve_wandb_mode(options: Mapping, sync_dir: str | Path) -> str:
    """The W&B mode for the options of ``logger.wandb`` (``mode``, ``probe_timeout``): WANDB_MODE in the
    environment wins; ``auto`` is online with credentials, else offline; online becomes offline when the
    server does not answer within ``probe_timeout`` seconds, so that a node without network trains and logs
    offline instead of failing in wandb.init. ``sync_dir`` is the directory named in the warning as the one
    to upload later."""
    mode = options.get("mode", "auto")
    timeout = options.get("probe_timeout", PROBE_TIMEOUT)
    if mode not in WANDB_MODES:
        raise InvalidValue("mode", mode, ", ".join(WANDB_MODES))
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidValue("probe_timeout", timeout, "a number of seconds > 0")
    os.environ.setdefault("WANDB_SILENT", "true")  # before wandb loads its settings: no banners
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        mode = "online" if wandb_credentials_present() else "offline"
    # only global rank zero starts a W&B run, so only it probes
    if mode == "online" and rank_zero_only.rank == 0 and not wandb_server_answers(timeout, sync_dir):
        return "offline"
    return mode


class FallbackWandbLogger(WandbLogger):
    """A WandbLogger whose run starts offline when starting it online fails (wandb's CommError: the server
    stopped answering after the probe, or turned the key down), so that the job trains on. The run starts
    lazily, on the first use of ``experiment`` (Lightning's log_hyperparams, log_metrics)."""

    @property
    def experiment(self):
        from wandb.errors import CommError

        try:
            return super().experiment
        except CommError as error:
            cause = (str(error).strip().splitlines() or [""])[0]
            warn_offline(f"the W&B run could not start online at {wandb_base_url()} ({type(error).__name__}: {cause})",
                         self.save_dir)
            self._wandb_init["mode"] = "offline"
            return super().experiment


def wandb_logger(save_dir: str, mode: str = "auto", probe_timeout: float = PROBE_TIMEOUT, **options) -> FallbackWandbLogger:
    """The logger of ``logger=wandb``: a FallbackWandbLogger in the mode resolve_wandb_mode chooses, so that
    no job prompts or waits for a network; ``options`` (project, name, group, tags, ...) go to WandbLogger."""
    mode = resolve_wandb_mode({"mode": mode, "probe_timeout": probe_timeout}, save_dir)
    return FallbackWandbLogger(save_dir=save_dir, mode=mode, **options)


def build_loggers(cfg: DictConfig, output_dir: str, run_name: str, group: str | None, tags: list[str]) -> list[Logger]:
    """One logger per ``_target_`` node of ``logger`` (``cfg``), writing into the run directory ``output_dir``;
    ``run_name``, ``group`` and ``tags`` fill the RUN_FACTS a node leaves null (W&B's). Every option of
    conf/logger/ includes ``csv``: results and the report read ``metrics.csv``, so a config without a
    CSVLogger is refused."""
    facts = dict(zip(RUN_FACTS, (run_name, group, list(tags))))
    targets = [hydra.utils.get_object(node._target_) for node in cfg.values()]
    if not any(isinstance(target, type) and issubclass(target, CSVLogger) for target in targets):
        raise ConfigError("logger", list(cfg), "nodes among which a CSVLogger (logger.csv): results and the report read metrics.csv")
    loggers = []
    for key, node in cfg.items():
        filled = {fact: value for fact, value in facts.items() if fact in node and node[fact] is None}
        loggers.append(config.instantiate(f"logger.{key}", node, _convert_="all", save_dir=output_dir, **filled))
    return loggers


def finish_wandb(exit_code: int) -> None:
    """Close the W&B run of this job (if any) with the job's exit status."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
