"""Experiment loggers: W&B (online with credentials, else offline; never prompts), TensorBoard,
and a CSV logger that always writes ``metrics.csv`` into the run directory."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from tlexp.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")


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


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise ConfigError("logger.wandb.mode", mode, ", ".join(WANDB_MODES))
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if wandb_credentials_present() else "offline"
    return mode


def build_loggers(cfg: DictConfig, output_dir: str, run_name: str, group: str | None, tags: list[str]) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=output_dir, name="", version="")]
    if "tensorboard" in cfg:
        loggers.append(TensorBoardLogger(save_dir=output_dir, name="tensorboard", version="", **cfg.tensorboard))
    if "wandb" in cfg:
        options = dict(cfg.wandb)
        mode = resolve_wandb_mode(options.pop("mode", "auto"))
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(save_dir=output_dir, name=run_name, group=group, tags=tags, mode=mode,
                                   log_model=False, settings={"init_timeout": 60, "silent": True},
                                   **options))
    return loggers


def finish_wandb(exit_code: int) -> None:
    """Close the W&B run of this job (if any) with the job's exit status."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
