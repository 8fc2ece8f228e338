"""The training task: compose objects from the config, fit, test the best checkpoint, record the result.

``train.py`` at the repository root and the ``tlexp-train`` console script both call ``main``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import timm
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tlexp.backbone import create_backbone
from tlexp.callbacks import Diverged, DivergenceGuard, EpochSeeder, EpochTimer, Interrupted, Interruption
from tlexp.data.subset import check_fraction
from tlexp.errors import ConfigError
from tlexp.feature_cache import check_setting as check_cache_setting
from tlexp.feature_cache import resolve as resolve_cache
from tlexp.loggers import build_loggers, finish_wandb
from tlexp.module import check_learning_rates
from tlexp.resume import CHECKPOINT_DIR, find_interrupted_run, resumable, resume_checkpoint
from tlexp.results import DONE_STATUSES, read_result, write_result
from tlexp.schedules import check_schedule

log = logging.getLogger("tlexp")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def check_config(cfg: DictConfig) -> None:
    """Reject bad numbers before anything heavy is built; each error names the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))  # '???' in conf/, e.g. data.root of data=image_folder
    if missing:
        raise ConfigError(missing[0], "???", "a value; this key is required and has no default")
    check_fraction(cfg.data.get("fraction"))
    check_learning_rates(cfg.strategy.get("lr_head"), cfg.strategy.get("lr_backbone"))
    check_schedule(cfg.strategy.get("schedule"))
    epochs = cfg.trainer.get("max_epochs")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigError("trainer.max_epochs", epochs, "an integer >= 1")
    if "cache_features" in cfg.strategy:  # refused before any model or data is loaded
        cache = cfg.strategy.cache_features
        check_cache_setting(cache)
        if cache is True:
            resolve_cache(True, cfg.strategy.get("bn_policy", "frozen"), bool(cfg.data.get("augment", False)))


def target_name(node: DictConfig) -> str:
    """``tlexp.strategies.Gradual`` -> ``gradual``: the short name of a config node's class."""
    return node._target_.rsplit(".", 1)[-1].lower()


def job_identity(cfg: DictConfig) -> tuple[str, str | None, bool]:
    """(run name from the overrides, W&B group, whether this job is part of a multirun)."""
    if not HydraConfig.initialized():
        return target_name(cfg.strategy), cfg.get("group"), False
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or hydra_cfg.runtime.choices.get("strategy", "run")
    group = cfg.get("group") or (Path(hydra_cfg.sweep.dir).name if multirun else None)
    return name, group, multirun


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate``, but a ConfigError raised by the target comes out as itself, not
    wrapped in Hydra's InstantiationException, so ``main`` reports it as one clear line."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def build(cfg: DictConfig):
    """Backbone -> data (preprocessing from the backbone) -> strategy module."""
    strategy_class = hydra.utils.get_class(cfg.strategy._target_)
    backbone = create_backbone(cfg.model.name, pretrained=cfg.model.pretrained and strategy_class.uses_pretrained_weights,
                               weights=cfg.model.weights if strategy_class.uses_pretrained_weights else None,
                               img_size=cfg.data.image_size, **cfg.model.get("kwargs", {}))
    datamodule = instantiate(cfg.data)
    datamodule.configure_preprocessing(timm.data.resolve_model_data_config(backbone))
    datamodule.setup("fit")
    module = instantiate(cfg.strategy, backbone=backbone, num_classes=datamodule.num_classes)
    return datamodule, module


def derived_values(datamodule, module) -> dict:
    total = sum(p.numel() for p in module.parameters())
    trainable = module.trainable_params(epoch=0)
    return {
        "params_total": total, "params_trainable": trainable, "params_frozen": total - trainable,
        "frozen_depth": module.frozen_depth(), "num_stages": len(module.backbone_stages),
        "stages": [s.name for s in module.stages], "unfreeze_epochs": module.unfreeze_epochs(),
        "stage_lrs": module.stage_lrs(), "num_classes": datamodule.num_classes,
        "train_size": len(datamodule.train_set), "val_size": len(datamodule.val_set), "test_size": len(datamodule.test_set),
    }


def run(cfg: DictConfig, output_dir: str, record: dict, ckpt_path: str | None = None) -> dict:
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    derived = derived_values(datamodule, module)
    record.update(derived, skipped_files=len(getattr(datamodule, "skipped_files", ())))
    name, group, _ = job_identity(cfg)
    tags = [target_name(cfg.strategy), f"fraction={cfg.data.fraction}", *cfg.get("tags", [])]
    loggers = build_loggers(cfg.logger, output_dir, name, group, tags)
    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values() if c and "_target_" in c]
    callbacks += [EpochSeeder(cfg.seed), EpochTimer(), DivergenceGuard(), Interruption(Path(output_dir) / CHECKPOINT_DIR)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    hparams = {**OmegaConf.to_container(cfg, resolve=True), "derived": derived}
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    started = time.perf_counter()
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    record["fit_seconds"] = time.perf_counter() - started
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    record["val_acc_final"] = metrics.get("val/acc")
    record["val_acc_best"] = metrics.get("val/acc_best")
    record["params_trainable_end"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if cfg.get("test", True):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
        metrics.update({k: float(v) for k, v in test_metrics.items()})
        record["test_acc"] = metrics.get("test/acc")
        record["best_checkpoint"] = best
    for logger in trainer.loggers:
        logger.log_metrics({f"summary/{k}": v for k, v in derived.items() if isinstance(v, (int, float))})
    return metrics


@rank_zero_only
def report(record: dict, output_dir: str) -> None:
    write_result(output_dir, record)
    if record["status"] == "completed":
        test = record.get("test_acc")
        print(f"\ntlexp: {record['strategy']} finished: test/acc={test:.4f}" if test is not None else "\ntlexp: finished",
              f"| trainable params {record['params_trainable']:,} of {record['params_total']:,}"
              f" (frozen depth {record['frozen_depth']}/{record['num_stages']})"
              f" | {record['wall_seconds']:.0f} s | results in {output_dir}")


def resume_point(cfg: DictConfig, output_dir: str, previous: dict | None, overrides: list[str], multirun: bool):
    """(checkpoint to resume from, earlier run directory it belongs to): ``ckpt_path`` if given; in a
    sweep, this job's own unfinished attempt; for a single run, the newest interrupted run with
    the same overrides."""
    if cfg.get("ckpt_path"):
        return cfg.ckpt_path, None
    if multirun:
        return (resume_checkpoint(output_dir), None) if resumable(previous) else (None, None)
    earlier = find_interrupted_run(Path(output_dir).parent, overrides, Path(output_dir))
    return (resume_checkpoint(earlier), earlier) if earlier else (None, None)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    output_dir = cfg.paths.output_dir
    _, group, multirun = job_identity(cfg)
    previous = read_result(output_dir)
    if multirun and previous and previous.get("status") in DONE_STATUSES:
        log.info("skipping %s: already %s (%s)", output_dir, previous["status"], previous.get("test_acc"))
        return previous.get("metrics", {}).get(cfg.get("optimized_metric"))
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    ckpt_path, earlier_run = resume_point(cfg, output_dir, previous, overrides, multirun)
    if ckpt_path and not cfg.get("ckpt_path"):
        log.info("resuming the interrupted job from %s", ckpt_path)
    record = {
        "status": "running", "overrides": overrides,
        "strategy": target_name(cfg.strategy), "model": cfg.model.name, "data": target_name(cfg.data),
        "fraction": cfg.data.get("fraction"), "seed": cfg.seed,
        "lr_head": cfg.strategy.get("lr_head"), "lr_backbone": cfg.strategy.get("lr_backbone"),
        "lr_decay": cfg.strategy.get("lr_decay"), "max_epochs": cfg.trainer.get("max_epochs"),
        "weight_decay": cfg.strategy.get("optimizer", {}).get("weight_decay"), "group": group,
        "tags": list(cfg.get("tags", [])), "resumed_from": str(ckpt_path) if ckpt_path else None,
    }
    report(record, output_dir)  # "running" on disk: a job killed without a word (SIGKILL) resumes next time
    started = time.perf_counter()
    interruption: BaseException | None = None
    try:
        metrics = run(cfg, output_dir, record, ckpt_path)
        record.update(status="completed", metrics=metrics)
    except ConfigError as error:
        record.update(status="failed", error=f"config error: {error}")
        log.error("config error: %s", error)
    except Diverged as error:
        record.update(status="diverged", error=f"diverged: {error}", diverged=error.details)
        log.error("diverged: %s", error)
    except Interrupted as error:
        interruption = error
        record.update(status="interrupted", error=f"interrupted by {error.signal_name} at epoch {error.epoch}, step {error.step}",
                      resume_checkpoint=str(error.checkpoint))
    except (KeyboardInterrupt, SystemExit) as error:  # a second Ctrl-C, or a signal outside a training batch
        interruption = error
        record.update(status="interrupted", error=f"interrupted ({type(error).__name__}); resumes from the last epoch's checkpoint")
    except Exception as error:  # a failed job is recorded; the sweep goes on
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
        log.exception("job failed")
    finally:
        record["wall_seconds"] = time.perf_counter() - started
        finish_wandb(0 if record["status"] == "completed" else 1)
        report(record, output_dir)
        if earlier_run is not None and record["status"] != "failed":
            mark_resumed(earlier_run, output_dir)
    if record["status"] == "completed":
        return metrics.get(cfg.get("optimized_metric"))
    if interruption is not None:  # stop here, also a sweep: the process is being stopped
        print(f"tlexp: {record['error']}; run the same command again to resume", file=sys.stderr)
        raise SystemExit(interruption.code if isinstance(interruption, SystemExit) and interruption.code else 130)
    if multirun:  # recorded in result.json; the sweep goes on. None, not NaN: hydra-optuna-sweeper
        return None  # marks a None trial failed and continues, while optuna 2.x's tell() raises on NaN
    print(f"tlexp: error: {record['error']}", file=sys.stderr)
    sys.exit(1)


@rank_zero_only
def mark_resumed(earlier_run: Path, output_dir: str) -> None:
    """Note in the interrupted run's record where it was continued, so it is resumed only once."""
    record = read_result(earlier_run) or {}
    write_result(earlier_run, {**record, "resumed_in": str(output_dir)})


if __name__ == "__main__":
    main()
