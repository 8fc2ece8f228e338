"""Which backbone for the data (``advise.models=[...]``): the same evidence per model, ranked by the linear probe.

Choosing the backbone comes before choosing the strategy. Each model's pretrained pooled features on the user's
training and validation images give the probe's validation accuracy (a strong baseline for transferability),
LogME and the k-NN probe (comparable between models on the same data); beside them what the model costs: its
parameters and its measured forward images/s at ``data.image_size`` on this machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tlexp import config
from tlexp.advice.evidence import feature_scores
from tlexp.errors import ConfigError, InvalidValue

MODEL_DIR = Path(config.__file__).resolve().parents[2] / "conf" / "model"
ACCEPTED = ("a list of model configs (conf/model: " + ", ".join(sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))) +
            ") or timm model names with pretrained weights (model=timm, model.pretrained=true)")


def model_config(name: str) -> DictConfig:
    """``name``: a config of conf/model as it is, else a timm name built with timm's pretrained weights."""
    path = MODEL_DIR / f"{name}.yaml"
    if path.is_file():
        return OmegaConf.load(path)
    return OmegaConf.merge(OmegaConf.load(MODEL_DIR / "timm.yaml"), {"name": name, "pretrained": True})


def images_per_second(backbone: torch.nn.Module, image_size: int, batch: int = 32, repeats: int = 3) -> float:
    """Forward throughput on random images of the training size (inference mode), the best of ``repeats``."""
    images = torch.randn(batch, 3, image_size, image_size)
    backbone.eval()
    with torch.inference_mode():
        backbone(images)  # warm-up
        best = min(_timed(backbone, images) for _ in range(repeats))
    return batch / best


def _timed(backbone, images) -> float:
    started = time.perf_counter()
    backbone(images)
    return time.perf_counter() - started


def rank(cfg: DictConfig, names: list[str]) -> list[dict]:
    """Every model's evidence on the configured data, best probe first."""
    if not isinstance(names, (list, tuple)) and not OmegaConf.is_list(names):
        raise ConfigError("advise.models", names, ACCEPTED)
    rows = []
    for name in names:
        torch.manual_seed(cfg.seed)
        try:
            backbone = config.instantiate("model", model_config(str(name)), img_size=cfg.data.image_size)
        except (InvalidValue, RuntimeError, OSError) as error:  # unknown to timm, or weights it cannot get
            raise ConfigError("advise.models", name, f"{ACCEPTED}; building it failed: {error}") from None
        datamodule = config.instantiate("data", cfg.data).prepare_for(backbone)
        scores = feature_scores(backbone, datamodule, cfg.seed)
        rows.append({"model": str(name), "probe_acc": scores["probe"], "logme": scores["logme"], "knn_acc": scores["knn"],
                     "params": sum(p.numel() for p in backbone.parameters()),
                     "images_per_second": images_per_second(backbone, int(cfg.data.image_size))})
    return sorted(rows, key=lambda r: -r["probe_acc"])


def describe(rows: list[dict]) -> list[str]:
    lines = ["  backbones for this data (pretrained features; ranked by the linear probe, the strong baseline):"]
    for rank_, row in enumerate(rows, 1):
        lines.append(f"    {rank_}. {row['model']:24s} probe {row['probe_acc']:.3f}  LogME {row['logme']:+.3f}  "
                     f"k-NN {row['knn_acc']:.3f}  {row['params'] / 1e6:.2f} M parameters  "
                     f"{row['images_per_second']:.0f} images/s forward")
    return lines
