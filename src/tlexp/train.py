"""Training: ``train`` is the task (build from a composed config, fit, test; the run's record fields and
metrics), ``job`` the wrapper around it (result.json, skip, resume, failures), ``main`` Hydra's entry point
(the exit code).

``train.py`` at the repository root and the ``tlexp-train`` console script both call ``main``; the race
(``tlexp.race``) runs its trials through ``job``; tests call ``train`` on a composed config.
"""

from __future__ import annotations

import logging
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import lightning as L
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tlexp import config, devices, liveness
from tlexp.backbone import timm_name
from tlexp.callbacks import Diverged, DivergenceGuard, EpochSeeder, EpochTimer, Heartbeat, Interrupted, Interruption
from tlexp.errors import ConfigError, InvalidValue, fail
from tlexp.feature_cache import callbacks_for as cache_callbacks
from tlexp.loggers import build_loggers, finish_wandb
from tlexp.resume import CHECKPOINT_DIR, continue_history, find_interrupted_run, resumable, resume_checkpoint
from tlexp.results import DONE_STATUSES, RunRecord, Status, read_result, write_result
from tlexp.strategies import strategy_name, target_name
from tlexp.trusted_files import refusal

log = logging.getLogger("tlexp")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def job_identity(cfg: DictConfig) -> tuple[str, str | None, bool]:
    """(run name from the overrides, W&B group, whether this job is part of a multirun)."""
    if not HydraConfig.initialized():
        return target_name(cfg.strategy), cfg.get("group"), False
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or hydra_cfg.runtime.choices.get("strategy", "run")
    group = cfg.get("group") or (Path(hydra_cfg.sweep.dir).name if multirun else None)
    return name, group, multirun


# --- the task ----------------------------------------------------------------------------------------------

def build(cfg: DictConfig):
    """Backbone -> data (preprocessing from the backbone) -> strategy module."""
    strategy = hydra.utils.get_class(cfg.strategy._target_)
    backbone = config.instantiate("model", cfg.model, sources={"img_size": "data.image_size"}, img_size=cfg.data.image_size,
                                  **({} if strategy.uses_pretrained_weights else {"pretrained": False, "weights": None}))
    needs = {key: value for key, value in strategy.data_defaults.items() if key in cfg.data and cfg.data[key] is None}
    datamodule = config.instantiate("data", cfg.data, **needs)
    try:
        datamodule.prepare_for(backbone)  # preprocessing from the backbone's timm data config, then setup
    except InvalidValue as error:  # a folder or file found wanting while loading
        raise ConfigError.at("data", error) from None
    module = config.instantiate("strategy", cfg.strategy, sources={"target_domain": "data.target_domain"},  # dann's
                                backbone=backbone, num_classes=datamodule.num_classes)
    return datamodule, module


def settings(datamodule, module, trainer: L.Trainer) -> dict:
    """What was built, as ``RunRecord`` fields: the strategy's class and rates, the backbone's timm name, the data's
    source, dataset and fraction, the trainer's epochs, the optimizer's weight decay."""
    hparams = module.hparams
    return {
        "strategy": strategy_name(type(module)), "model": timm_name(module.backbone),
        "data": type(datamodule).__name__.lower(), "dataset": datamodule.dataset_name, "fraction": datamodule.fraction,
        "lr_head": hparams.get("lr_head"), "lr_backbone": hparams.get("lr_backbone"), "lr_ratio": hparams.get("lr_ratio"),
        "lr_decay": hparams.get("lr_decay"), "max_epochs": trainer.max_epochs,
        "weight_decay": getattr(module.optimizer_factory, "keywords", {}).get("weight_decay"),
    }


def derived_values(datamodule, module) -> dict:
    total = sum(p.numel() for p in module.parameters())
    plan = module.plan
    trainable = plan.trainable_params(epoch=0)
    return {
        "params_total": total, "params_trainable": trainable, "params_frozen": total - trainable,
        "frozen_depth": plan.frozen_depth, "num_stages": len(plan.backbone_stages),
        "stages": list(plan.stages), "unfreeze_epochs": plan.start,
        "stage_lrs": plan.base_lrs, "num_classes": datamodule.num_classes,
        "train_size": len(datamodule.train_set), "val_size": len(datamodule.val_set), "test_size": len(datamodule.test_set),
    }


def train(cfg: DictConfig, output_dir: str | Path | None = None, *, callbacks: Sequence[Callback] = (),
          ckpt_path: str | None = None, progress: Callable[..., object] | None = None) -> dict:
    """The task: check ``cfg`` (a composed config), build backbone, data and strategy, fit (from ``ckpt_path``, default
    the config's), test the best checkpoint. Returns the run's ``RunRecord`` fields, read off the objects it built and
    the fit, with ``metrics`` (every final logged value).

    ``output_dir`` (default ``paths.output_dir``) receives the run's own files (checkpoints, ``metrics.csv``,
    ``subset_indices.json``, the W&B run), never ``result.json``; ``callbacks`` join the config's (the job's
    heartbeat, the race's pruning callback); ``progress(**fields)`` gets the fields as they become known, so that
    a run stopped later (an exception, a kill) still leaves them to its caller. Whatever stops the run is raised
    (``ConfigError``, ``Diverged``, ``Interrupted``, ``optuna.TrialPruned``, ...). Callable many times in one process."""
    output_dir = str(output_dir or cfg.paths.output_dir)
    ckpt_path = ckpt_path or cfg.get("ckpt_path")
    progress = progress or (lambda **fields: None)
    exit_code = 1
    try:
        config.check(cfg)
        L.seed_everything(cfg.seed, workers=True)
        datamodule, module = build(cfg)
        strategy = strategy_name(type(module))
        name, group, _ = job_identity(cfg)
        tags = [strategy, f"fraction={datamodule.fraction}", *cfg.get("tags", [])]
        if datamodule.target_domain:
            tags.append(f"target_domain={datamodule.target_domain}")
        loggers = build_loggers(cfg.logger, output_dir, name, group, tags)
        callbacks = [*(hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values() if c and "_target_" in c), *callbacks,
                     *cache_callbacks(cfg.strategy),  # frozen, partial, gradual: the feature cache their cache_* keys set
                     EpochSeeder(cfg.seed), EpochTimer(), DivergenceGuard(), Interruption(Path(output_dir) / CHECKPOINT_DIR)]
        own_gpu = (devices.trainer_devices(cfg.trainer, OmegaConf.select(HydraConfig.get(), "job.num", default=0))
                   if job_identity(cfg)[2] else None)  # side by side on one machine: each job its own GPU
        trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers,
                                                     **({"devices": own_gpu} if own_gpu else {}))
        derived = derived_values(datamodule, module)
        fields = {**settings(datamodule, module, trainer), "seed": cfg.seed, **derived,
                  "skipped_files": len(getattr(datamodule, "skipped_files", ()))}
        progress(**fields)
        if ckpt_path:  # before the loggers write: Lightning's CSVLogger deletes a metrics.csv it finds
            continue_history(trainer.loggers, ckpt_path)
        for logger in trainer.loggers:
            logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "derived": derived})
        fitted, metrics = fit(cfg, trainer, datamodule, module, ckpt_path)
        fields.update(fitted)
        progress(**fitted)
        if cfg.get("test", True):
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
            for test_metrics in trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False,
                                             weights_only=True):  # 2: target_domain
                metrics.update({k: float(v) for k, v in test_metrics.items()})
            fields.update(test_acc=metrics.get("test/acc"), target_test_acc=metrics.get("test/target_acc"), best_checkpoint=best)
        for logger in trainer.loggers:
            logger.log_metrics({f"summary/{k}": v for k, v in derived.items() if isinstance(v, (int, float))})
        exit_code = 0
        return {**fields, "metrics": metrics}
    finally:
        finish_wandb(exit_code)


def fit(cfg: DictConfig, trainer: L.Trainer, datamodule, module, ckpt_path: str | None) -> tuple[dict, dict[str, float]]:
    """``trainer.fit`` (unless ``train=false``): (the fit's record fields, the metrics it logged last)."""
    started = time.perf_counter()
    if cfg.get("train", True):
        try:  # weights_only: a checkpoint from elsewhere (ckpt_path=, a copied run directory) cannot run code
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except pickle.UnpicklingError as error:
            raise ConfigError("ckpt_path", str(ckpt_path), "a checkpoint of tensors and plain values (one tlexp wrote)",
                              str(refusal(ckpt_path, "checkpoint", error))) from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"fit_seconds": time.perf_counter() - started, "val_acc_final": metrics.get("val/acc"),
            "val_acc_best": metrics.get("val/acc_best"),
            "params_trainable_end": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "unfreeze_epochs": module.plan.start}, metrics  # as trained: plateau unfreezing decides it during training


# --- the job around it -------------------------------------------------------------------------------------

@rank_zero_only
def report(record: RunRecord, output_dir: str) -> None:
    write_result(output_dir, record)
    if record.status == Status.COMPLETED:
        test = record.test_acc
        print(f"\ntlexp: {record.strategy} finished: test/acc={test:.4f}" if test is not None else "\ntlexp: finished",
              f"| trainable params {record.params_trainable:,} of {record.params_total:,}"
              f" (frozen depth {record.frozen_depth}/{record.num_stages})"
              f" | {record.wall_seconds:.0f} s | results in {output_dir}")


def resume_point(cfg: DictConfig, output_dir: str, previous: RunRecord | None, overrides: list[str], multirun: bool):
    """(checkpoint to resume from, earlier run directory it belongs to): ``ckpt_path`` if given; in a
    sweep, this job's own unfinished attempt; for a single run started by Hydra, the newest interrupted run
    with the same overrides (a direct call has none to compare)."""
    if cfg.get("ckpt_path"):
        return cfg.ckpt_path, None
    if multirun:
        return (resume_checkpoint(output_dir), None) if resumable(previous) else (None, None)
    if not HydraConfig.initialized():
        return None, None
    earlier = find_interrupted_run(Path(output_dir).parent, overrides, Path(output_dir))
    return (resume_checkpoint(earlier), earlier) if earlier else (None, None)


def requested(cfg: DictConfig) -> dict:
    """What ``result.json`` says of a job before anything is built: the keys a sweep lists its jobs by
    (``sweep.summarize``), as the config asks for them; ``train`` replaces them with what it built."""
    return {"strategy": target_name(cfg.strategy), "fraction": cfg.data.get("fraction"), "seed": cfg.seed}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """train.py: the job; its ``optimized_metric`` (for a sweeper), None for a failed job of a sweep, exit 1 alone.
    Called with a composed config (``main(cfg)``), it runs the same without Hydra's runtime (a single run)."""
    record = job(cfg)
    if record.status == Status.COMPLETED:
        return (record.metrics or {}).get(cfg.get("optimized_metric"))
    if job_identity(cfg)[2]:  # recorded in result.json; the sweep goes on (the Optuna sweeper marks the trial FAIL)
        return None
    fail(record.error)


def job(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> RunRecord:
    """One job in its output directory: skipped if a sweep already finished it, resumed if interrupted, ``train``,
    recorded in ``result.json``. An interruption ends the process (SystemExit) after recording it."""
    output_dir = cfg.paths.output_dir
    _, group, multirun = job_identity(cfg)
    previous = read_result(output_dir)
    if multirun and previous and previous.status in DONE_STATUSES:
        log.info("skipping %s: already %s (%s)", output_dir, previous.status, previous.test_acc)
        return previous
    # the same sweep launched twice: never two writers in one directory (DDP's other ranks find rank zero's record)
    if previous and rank_zero_only.rank == 0 and liveness.still_running(previous):
        busy = f"{output_dir} is in use by process {previous.pid} on {previous.host} (started {previous.started})"
        if multirun:
            log.warning("skipping %s; it is still running", busy)
            return previous
        fail(f"{busy}; wait for it or choose another hydra.run.dir")
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    ckpt_path, earlier_run = resume_point(cfg, output_dir, previous, overrides, multirun)
    before = read_result(earlier_run) if earlier_run else previous  # the attempt this one follows
    if before is not None and before.status in DONE_STATUSES:  # a single run's directory used again
        before = None
    if before is not None and before.status == Status.KILLED:
        log.warning("previous attempt was %s; %s", before.error,
                    f"resuming from {ckpt_path}" if ckpt_path else "starting over: it left no checkpoint")
    elif ckpt_path and not cfg.get("ckpt_path"):
        log.info("resuming the interrupted job from %s", ckpt_path)
    record = RunRecord(
        status=Status.RUNNING, overrides=overrides, **requested(cfg), group=group, tags=list(cfg.get("tags", [])),
        resumed_from=str(ckpt_path) if ckpt_path else None,
        attempts=[*(before.attempts or []), before.as_attempt()] if before else None,
        epochs_done=(before.epochs_done or 0) if before and ckpt_path else 0, **liveness.identity(),
    )
    report(record, output_dir)  # "running" on disk: a job killed without a word (SIGKILL) reads as killed and resumes next time
    started = time.perf_counter()
    interruption: BaseException | None = None
    heartbeat = Heartbeat(record, output_dir)
    try:
        with heartbeat:  # stopped before the final record below is written
            fields = train(cfg, output_dir, callbacks=[*callbacks, heartbeat], ckpt_path=ckpt_path, progress=record.update)
        record.update(status=Status.COMPLETED, **fields)
    except optuna.TrialPruned as error:  # the race's pruner stopped it: a result of its settings, like diverging
        record.update(status=Status.PRUNED, error=f"pruned: {error}")
    except InvalidValue as error:
        record.update(status=Status.FAILED, error=f"config error: {error}",
                      refused={"key": getattr(error, "key", error.name), "value": str(error.value), "accepted": error.accepted})
        log.error("config error: %s", error)
    except Diverged as error:
        record.update(status=Status.DIVERGED, error=f"diverged: {error}", diverged=error.details)
        log.error("diverged: %s", error)
    except Interrupted as error:
        interruption = error
        record.update(status=Status.INTERRUPTED, error=f"interrupted by {error.signal_name} at epoch {error.epoch}, step {error.step}",
                      resume_checkpoint=str(error.checkpoint))
    except (KeyboardInterrupt, SystemExit) as error:  # a second Ctrl-C, or a signal outside a training batch
        interruption = error
        record.update(status=Status.INTERRUPTED, error=f"interrupted ({type(error).__name__}); resumes from the last epoch's checkpoint")
    except Exception as error:  # a failed job is recorded; the sweep goes on
        record.update(status=Status.FAILED, error=f"{type(error).__name__}: {error}")
        log.exception("job failed")
    finally:
        record.wall_seconds = time.perf_counter() - started
        report(record, output_dir)
        if earlier_run is not None and record.status != Status.FAILED:
            mark_resumed(earlier_run, output_dir)
    if interruption is not None:  # stop here, also a sweep: the process is being stopped
        print(f"tlexp: {record.error}; run the same command again to resume", file=sys.stderr)
        raise SystemExit(interruption.code if isinstance(interruption, SystemExit) and interruption.code else 130)
    return record


@rank_zero_only
def mark_resumed(earlier_run: Path, output_dir: str) -> None:
    """Note in the interrupted run's record where it was continued, so it is resumed only once."""
    record = read_result(earlier_run) or RunRecord()
    write_result(earlier_run, record.update(resumed_in=str(output_dir)))


if __name__ == "__main__":
    main()
