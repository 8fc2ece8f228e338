"""The pocket race: the race (``tlexp.race``) at a budget small enough for advice, on the user's own data.

Every candidate strategy gets the same few trials of a few epochs on at most ``advise.max_train_images`` training
images, its first trial at its tuned defaults (``race.start_at_defaults``), the rest from the sampler, pruned by
successive halving after every epoch; one seed and no test (``race.seeds=0``): the strategies are ranked by their
best trial's val/acc, so advice never sees the test split. It runs as ``train.py -m experiment=race`` in a child
process, into ``<advise dir>/pocket_race`` (its log: ``pocket_race.log``), so it is the race itself, resumable by
running the same advise command again. Once it has finished, the trials' checkpoints are deleted (about 60 MB per
trial of EfficientNet-Lite0, 1.5 GB for the default budget; nothing reads them once ``race.db`` holds the trials).

The ranking is noisy by construction: the shortlist keeps every strategy whose best val/acc is within the 95 %
noise of a difference between two accuracies on the validation split (1.96 x sqrt(2 p (1 - p) / n), p adjusted
as Agresti and Coull do, (k + 2) / (n + 4), so that it stays above 0 at 100 %) of the leader's, and the full
race over that shortlist is what settles it; its time is estimated from the pocket race's measured seconds per
training image-epoch.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from tlexp.results import RACE_FILE, read_result, settings_text

log = logging.getLogger("tlexp")

FULL_RACE = {"trials": 12, "epochs": 8, "seeds": 3}
"""The race's default budget (conf/experiment/race.yaml), which the printed command runs."""
SEARCHED_SHARE = 0.47
"""Epochs a default race's search runs per trial, as a share of trials x max epochs, after pruning: 272 of 576 on
Fashion-MNIST 1 % and 272 of 576 on digits (docs/race.md, the reference races)."""
LEFT_TO_THE_RACE = ("strategy", "logger", "trainer.max_epochs", "data.fraction", "task_name", "hydra.", "advise.",
                    "race.", "experiment")
"""Command-line keys of advise that the pocket race sets itself (or that mean nothing to it)."""


def passed_on(task_overrides: list[str]) -> list[str]:
    """Advise's command-line overrides that describe the data and the model, passed on to the race."""
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    return [o.input_line for o in parsed if not o.get_key_element().lstrip("+~").startswith(LEFT_TO_THE_RACE)]


def pocket_overrides(settings: DictConfig, fraction: float, train_size: int) -> list[str]:
    """The race's budget for advice: ``fraction`` shrunk so that at most ``max_train_images`` images train."""
    capped = fraction * min(1.0, settings.max_train_images / max(train_size, 1))
    return ["experiment=race", f"race.strategies=[{','.join(settings.strategies)}]", f"race.trials={settings.trials}",
            "race.seeds=0", "race.start_at_defaults=true", f"trainer.max_epochs={settings.epochs}",
            f"data.fraction={capped:.6g}"]


def run(settings: DictConfig, overrides: list[str], directory: Path) -> dict:
    """Run (or continue) the pocket race into ``directory``; its race.json."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tlexp.train", "-m", *overrides, f"hydra.sweep.dir={directory}"]
    log_file = directory / "pocket_race.log"
    print(f"pocket race: {len(settings.strategies)} strategies x {settings.trials} trials of <= {settings.epochs} "
          f"epochs, log {log_file}", flush=True)
    with open(log_file, "a") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log_file.read_text()[-2000:]
        raise RuntimeError(f"the pocket race failed (exit {done.returncode}); its log {log_file} ends:\n{tail}")
    for checkpoints in directory.glob("*/*/*/checkpoints"):
        shutil.rmtree(checkpoints)
    return json.loads((directory / RACE_FILE).read_text())


def noise(accuracy: float, images: int) -> float:
    """95 % half-width of the difference between two accuracies near ``accuracy`` on ``images`` validation images."""
    images = max(images, 1)
    p = (accuracy * images + 2) / (images + 4)
    return 1.96 * math.sqrt(2 * p * (1 - p) / images)


def ranking(race: dict) -> dict:
    """The pocket race's strategies by best val/acc, the shortlist within noise of the leader, and the compute."""
    entries = [e for e in race["cells"][0]["strategies"] if e["val_acc_best"] is not None]
    entries.sort(key=lambda e: -e["val_acc_best"])
    if not entries:
        raise RuntimeError(f"no trial of the pocket race in {race['race_dir']} finished")
    val_size = best_job_record(race, entries[0]).val_size or 0
    band = noise(entries[0]["val_acc_best"], val_size)
    rows = [{"strategy": e["strategy"], "val_acc_best": e["val_acc_best"], "settings": e["best_params"],
             "within_noise": entries[0]["val_acc_best"] - e["val_acc_best"] <= band,
             "trials": e["search"]["trials"], "pruned": e["search"]["pruned"], "epochs": e["search"]["epochs"],
             "image_epochs": e["search"]["image_epochs"], "seconds": e["search"]["seconds"]} for e in entries]
    seconds = sum(e["search"]["seconds"] for e in race["cells"][0]["strategies"])
    image_epochs = sum(e["search"]["image_epochs"] for e in race["cells"][0]["strategies"])
    return {"race_dir": race["race_dir"], "val_size": val_size, "noise": band, "ranked": rows,
            "shortlist": [r["strategy"] for r in rows if r["within_noise"]], "seconds": seconds,
            "image_epochs": image_epochs}


def best_job_record(race: dict, entry: dict):
    """The result.json of the strategy's best trial (its validation size)."""
    job = next(t for t in entry["trials"] if t["number"] == entry["best_trial"])
    cell = race["cells"][0]["cell"]
    return read_result(Path(race["race_dir"]) / cell / entry["strategy"] / str(job["number"]))


def full_race(shortlist: list[str], overrides: list[str], train_size: int, pocket: dict) -> dict:
    """The race that settles the shortlist (the default budget, at least the two leaders), its estimated seconds."""
    strategies = shortlist if len(shortlist) > 1 else [r["strategy"] for r in pocket["ranked"][:2]]
    per_strategy = FULL_RACE["trials"] * FULL_RACE["epochs"] * SEARCHED_SHARE + FULL_RACE["seeds"] * FULL_RACE["epochs"]
    seconds_per_image_epoch = pocket["seconds"] / max(pocket["image_epochs"], 1)
    estimate = len(strategies) * per_strategy * train_size * seconds_per_image_epoch
    command = " ".join(["python train.py -m experiment=race", *(f"'{o}'" if "[" in o or "," in o else o for o in overrides),
                        f"'race.strategies=[{','.join(strategies)}]'"])
    return {"strategies": strategies, "command": command, "estimated_seconds": round(estimate),
            "seconds_per_image_epoch": seconds_per_image_epoch}


def describe(pocket: dict, race: dict) -> list[str]:
    lines = [f"  pocket race ({len(pocket['ranked'])} strategies, best val/acc on {pocket['val_size']} validation images, "
             f"{pocket['seconds'] / 60:.1f} min of trials; noise between two strategies +-{pocket['noise']:.3f}):"]
    for rank, row in enumerate(pocket["ranked"], 1):
        lines.append(f"    {rank}. {row['strategy']:15s} {row['val_acc_best']:.3f}  "
                     f"{'shortlist' if row['within_noise'] else 'behind   '}  {row['trials']} trials ({row['pruned']} pruned), "
                     f"{row['epochs']} epochs  {settings_text(row['settings'])}")
    lines += [f"  full race over the shortlist (about {race['estimated_seconds'] / 60:.0f} min here, "
              f"{len(race['strategies'])} strategies x the default budget): {race['command']}"]
    return lines
