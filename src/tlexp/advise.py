"""``tlexp-advise`` (``python -m tlexp.advise``): which strategy (and backbone) to start with, decided by a pocket
race on the user's data, with the evidence beside it.

Composed like training (``tlexp-advise data=image_folder data.root=...``; its own settings under ``advise.``,
conf/advise.yaml), it

1. measures the evidence (``advice.evidence``): labeled images per class, the linear probe on pretrained against
   random features, LogME, a k-NN probe and the BatchNorm domain distance per stage;
2. with ``advise.models=[...]``, ranks those backbones on the same evidence and their cost (``advice.models``);
3. runs the pocket race (``advice.pocket_race``): the candidate strategies briefly on this data, ranked on
   validation, a shortlist within the validation split's noise of the leader, the settings to paste, and the
   full race that would settle the shortlist with its estimated time;
4. says what the seeds' decision table would pick, labelled with its measured record (``advice.seeds_table``).

Printed, written to ``<run dir>/advice.json`` and logged to the configured loggers (W&B).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tlexp import config
from tlexp.advice import models, pocket_race
from tlexp.advice.evidence import measure
from tlexp.advice.seeds_table import RECORD
from tlexp.errors import ConfigError, fail
from tlexp.loggers import build_loggers, finish_wandb
from tlexp.results import settings_text
from tlexp.train import CONFIG_DIR


def check(settings: DictConfig) -> None:
    """advise.* before anything runs: one error naming the key."""
    for key in ("trials", "epochs", "max_train_images"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"advise.{key}", value, "an integer >= 1")
    if not isinstance(settings.race, bool):
        raise ConfigError("advise.race", settings.race, "true or false")
    if not settings.strategies:
        raise ConfigError("advise.strategies", settings.strategies, "a list of one or more strategies")


def decide(cfg: DictConfig, advice: dict, out: Path) -> None:
    """The pocket race, its pick and the full race that would settle it, into ``advice``."""
    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    data_and_model = pocket_race.passed_on(task)
    fraction = float(cfg.data.fraction)
    race = pocket_race.run(cfg.advise, [*data_and_model, *pocket_race.pocket_overrides(
        cfg.advise, fraction, advice["figures"]["train_size"])], out / "pocket_race")
    ranked = pocket_race.ranking(race)
    best = ranked["ranked"][0]
    full = pocket_race.full_race(ranked["shortlist"], [*data_and_model, f"data.fraction={fraction:g}"],
                                 advice["figures"]["train_size"], ranked)
    settings = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (best["settings"] or {}).items()]
    advice.update(pocket_race=ranked, full_race=full, pick={
        "strategy": best["strategy"], "settings": best["settings"],
        "command": " ".join(["python train.py", *data_and_model, f"data.fraction={fraction:g}", f"strategy={best['strategy']}",
                             *settings])})


def describe(advice: dict) -> str:
    f, table = advice["figures"], advice["seeds_table"]
    per_class = f["images_per_class"]
    distance = ", ".join(f"{stage} {value:.2f}" for stage, value in f["domain_distance"].items()) or "n/a (no BatchNorm)"
    lines = [
        f"tlexp advise: {advice['model']} on {advice['dataset']}",
        f"  labeled images: {f['train_size']} in {f['num_classes']} classes ({per_class['min']}-{per_class['max']} per class)",
        f"  linear probe: pretrained features {f['probe_acc_pretrained']:.3f}, random features {f['probe_acc_random']:.3f} "
        f"(gain {f['probe_gain']:+.3f})",
        f"  LogME (evidence, not the decision): pretrained {f['logme_pretrained']:.3f}, random {f['logme_random']:.3f}; "
        "log evidence per sample of a Bayesian linear model of the labels on the features: higher = features more "
        "linearly predictive of the labels, comparable between models or features on the same data, not an accuracy",
        f"  k-NN probe (evidence, not the decision; k={f['knn_neighbours']}, standardised features, validation accuracy): "
        f"pretrained features {f['knn_acc_pretrained']:.3f}, random features {f['knn_acc_random']:.3f}",
        f"  domain distance per stage (symmetric KL at BatchNorm inputs): {distance}",
        f"  what the seeds' table says: {table['rule']} -> python train.py {' '.join(table['overrides'])}",
        f"    its record: {RECORD}"]
    if advice.get("models"):
        lines += models.describe(advice["models"])
    if advice.get("pocket_race"):
        pick = advice["pick"]
        lines += pocket_race.describe(advice["pocket_race"], advice["full_race"])
        lines += [f"  -> start with {pick['strategy']} ({settings_text(pick['settings'])}): {pick['command']}"]
    return "\n".join(lines)


def log_metrics(cfg: DictConfig, advice: dict, out: Path) -> None:
    f = advice["figures"]
    metrics = ({f"advise/{k}": v for k, v in f.items() if isinstance(v, (int, float))}
               | {f"advise/domain_distance/{k}": v for k, v in f["domain_distance"].items()}
               | {f"advise/pocket/{r['strategy']}/val_acc_best": r["val_acc_best"]
                  for r in (advice.get("pocket_race") or {}).get("ranked", [])}
               | {f"advise/model/{r['model']}/probe_acc": r["probe_acc"] for r in advice.get("models") or []})
    try:
        for logger in build_loggers(cfg.logger, str(out), "advise", cfg.get("group"), ["advise"]):
            logger.log_hyperparams({"advice": advice})
            logger.log_metrics(metrics)
            logger.finalize("success")
    finally:
        finish_wandb(0)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="advise")
def run(cfg: DictConfig) -> dict:
    try:
        config.check(cfg)
        check(cfg.advise)
    except ConfigError as error:
        fail(error)
    out = Path(cfg.paths.output_dir)
    advice = measure(cfg)
    if cfg.advise.models:
        advice["models"] = models.rank(cfg, list(cfg.advise.models))
    if cfg.advise.race:
        decide(cfg, advice, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "advice.json").write_text(json.dumps(advice, indent=1, default=str))
    log_metrics(cfg, advice, out)
    print(describe(advice))
    return advice


def main() -> None:
    """Console script (``tlexp-advise``)."""
    run()


if __name__ == "__main__":
    main()
