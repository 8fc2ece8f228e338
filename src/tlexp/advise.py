"""``tlexp-advise`` (``python -m tlexp.advise``): which strategy to start with, measured in minutes on a CPU.

Composed like training (``tlexp-advise data=image_folder data.root=...``), it measures on the training
subset (``data.fraction``) and the validation split:

- labeled images, in all and per class;
- a linear probe (logistic regression) on the pretrained backbone's pooled features against the same probe
  on a randomly initialised backbone's: how much the pretrained features already know (``probe_gain``);
- beside it, on the same features, two transferability scores (``transferability.py``), reported as evidence,
  not used by the decision: LogME on the training features and a k-NN probe's validation accuracy, each for the
  pretrained and the random backbone;
- a source-free domain distance per stage: the symmetric KL divergence between the target images'
  per-channel statistics at each BatchNorm input and that layer's running statistics (which summarise
  the source data), averaged over channels and over the stage's BatchNorm layers;

then recommends after the seeds' decision table (data size x domain similarity; docs/advise.md):
strategy, frozen depth, rates, BatchNorm policy, overrides and an expected test/acc range, with the figures
that led to it. Printed, written to ``<run dir>/advice.json`` and logged to the configured loggers (W&B).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tlexp import config
from tlexp.feature_cache.dataset import compute_features
from tlexp.inference import inference_pass
from tlexp.loggers import build_loggers, finish_wandb
from tlexp.stages import HEAD, split_stages
from tlexp.train import CONFIG_DIR
from tlexp.transferability import KNN_NEIGHBOURS, knn_accuracy, logme

log = logging.getLogger("tlexp")

SMALL, LARGE = 1_000, 10_000
"""The decision table's data sizes: small below 1K labeled images, large above 10K (medium between)."""
CLOSE_GAIN = 0.10
"""Domain similarity is high when the pretrained probe beats the random-feature probe by this much."""
CLOSED_ERROR = (0.13, 0.83)
"""Share of the probe's remaining error the best fine-tuning strategy closed in tlexp's confirmed studies
(Fashion-MNIST 1 %: 0.783 -> 0.811; digits: 0.837 -> 0.973): the expected range's two ends."""
STATISTICS_IMAGES = 512


def probe_accuracy(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], seed: int) -> float:
    """Validation accuracy of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train[0].numpy(), train[1].numpy())
    return float(probe.score(val[0].numpy(), val[1].numpy()))


def gaussian_divergence(mean_a, var_a, mean_b, var_b) -> torch.Tensor:
    """Symmetric KL divergence between per-channel Gaussians, per channel."""
    var_a, var_b = var_a.clamp_min(1e-5), var_b.clamp_min(1e-5)
    forward = 0.5 * (torch.log(var_b / var_a) + (var_a + (mean_a - mean_b) ** 2) / var_b - 1)
    backward = 0.5 * (torch.log(var_a / var_b) + (var_b + (mean_a - mean_b) ** 2) / var_a - 1)
    return (forward + backward) / 2


def domain_distance(backbone: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Per stage: the mean divergence of the target statistics at its BatchNorm inputs from their running
    statistics (empty for a backbone without BatchNorm, e.g. a ViT)."""
    sums: dict[_BatchNorm, list] = {}

    def record(bn, inputs):
        x = inputs[0].double().transpose(0, 1).flatten(1)  # channels x values
        total = sums.setdefault(bn, [0, 0.0, 0.0])
        total[0] += x.shape[1]
        total[1] = total[1] + x.sum(1)
        total[2] = total[2] + (x ** 2).sum(1)

    stages = [s for s in split_stages(backbone, nn.Identity()) if s.name != HEAD]
    hooks = [bn.register_forward_pre_hook(record) for s in stages for bn in s.batchnorms if bn.track_running_stats]
    try:
        with inference_pass(backbone):
            for batch in images.split(128):
                backbone(batch)
    finally:
        for hook in hooks:
            hook.remove()
    distance = {}
    for stage in stages:
        values = []
        for bn in stage.batchnorms:
            if bn in sums:
                count, total, squares = sums[bn]
                mean = total / count
                values.append(float(gaussian_divergence(mean, squares / count - mean ** 2, bn.running_mean.double(),
                                                        bn.running_var.double()).mean()))
        if values:
            distance[stage.name] = float(np.mean(values))
    return distance


def recommend(train_size: int, gain: float, probe: float, stage_names: list[str]) -> dict:
    """The decision table's row for (data size, similarity), in tlexp's settings."""
    size = "small" if train_size < SMALL else "large" if train_size > LARGE else "medium"
    similarity = "high" if gain >= CLOSE_GAIN else "low"
    depth = len(stage_names)
    rows = {
        ("small", "high"): ("frozen", depth, None, ["strategy=frozen"], "feature extraction only"),
        ("small", "low"): ("frozen", depth, None, ["strategy=frozen", "data.augment=true"],
                           "feature extraction with augmentation"),
        ("medium", "high"): ("gradual", depth, 1e-4, ["strategy=gradual", "strategy.lr_backbone=1e-4",
                             f"strategy.milestones={{{stage_names[-1]}:1,{stage_names[-2]}:2}}"],
                             "gradual unfreezing of the last two stages"),
        ("medium", "low"): ("gradual", depth, 1e-3, ["strategy=gradual", "strategy.lr_backbone=1e-3",
                            "strategy.lr_ratio=0.01"],
                            "gradual unfreezing with discriminative rates, 1e-3 at the top to 1e-5 at the stem"),
        ("large", "high"): ("full", 0, 1e-4, ["strategy=full", "strategy.lr_backbone=1e-4"], "full fine-tuning, low rate"),
        ("large", "low"): ("full", 0, 1e-4, ["strategy=full", "strategy.lr_backbone=1e-4"],
                           "full fine-tuning (or scratch: compare both, strategy=full,scratch)"),
    }
    strategy, frozen_depth, lr_backbone, overrides, why = rows[(size, similarity)]
    low, high = (probe + share * (1 - probe) for share in CLOSED_ERROR)
    return {"strategy": strategy, "frozen_depth_at_start": frozen_depth, "lr_head": 1e-2, "lr_backbone": lr_backbone,
            "bn_trainable": "frozen_stats", "bn_policy": "frozen", "overrides": overrides, "data_size": size,
            "domain_similarity": similarity, "rule": f"{size} data x {similarity} similarity: {why}",
            "expected_test_acc": [probe if strategy == "frozen" else low, probe if strategy == "frozen" else high]}


def measure(cfg: DictConfig) -> dict:
    backbone = config.instantiate("model", cfg.model, sources={"img_size": "data.image_size"}, img_size=cfg.data.image_size)
    torch.manual_seed(cfg.seed)
    random = config.instantiate("model", cfg.model, img_size=cfg.data.image_size, pretrained=False, weights=None)
    datamodule = config.instantiate("data", cfg.data).prepare_for(backbone)
    labels = np.asarray(datamodule.train_set.labels)
    per_class = np.bincount(labels, minlength=datamodule.num_classes)
    features = {name: [compute_features(net, split, datamodule.normalize) for split in (datamodule.train_set, datamodule.val_set)]
                for name, net in (("pretrained", backbone), ("random", random))}
    probe = {name: probe_accuracy(*splits, seed=cfg.seed) for name, splits in features.items()}
    scores = {name: {"logme": logme(train[0].numpy(), train[1].numpy()),
                     "knn": knn_accuracy((train[0].numpy(), train[1].numpy()), (val[0].numpy(), val[1].numpy()))}
              for name, (train, val) in features.items()}
    count = min(STATISTICS_IMAGES, len(datamodule.train_set))
    images = datamodule.normalize(torch.stack([torch.as_tensor(datamodule.train_set[i][0]) for i in range(count)]))
    distance = domain_distance(backbone, images)
    stage_names = [s.name for s in split_stages(backbone, nn.Identity()) if s.name != HEAD]
    figures = {"train_size": int(len(labels)), "num_classes": datamodule.num_classes,
               "images_per_class": {"min": int(per_class.min()), "median": float(np.median(per_class)), "max": int(per_class.max())},
               "probe_acc_pretrained": probe["pretrained"], "probe_acc_random": probe["random"],
               "probe_gain": probe["pretrained"] - probe["random"],
               "logme_pretrained": scores["pretrained"]["logme"], "logme_random": scores["random"]["logme"],
               "knn_acc_pretrained": scores["pretrained"]["knn"], "knn_acc_random": scores["random"]["knn"],
               "knn_neighbours": min(KNN_NEIGHBOURS, len(labels)), "domain_distance": distance}
    return {"model": cfg.model.name, "dataset": str(cfg.data.get("name") or type(datamodule).__name__),
            "figures": figures, "recommendation": recommend(len(labels), figures["probe_gain"], probe["pretrained"], stage_names)}


def describe(advice: dict) -> str:
    f, r = advice["figures"], advice["recommendation"]
    per_class = f["images_per_class"]
    distance = ", ".join(f"{stage} {value:.2f}" for stage, value in f["domain_distance"].items()) or "n/a (no BatchNorm)"
    return "\n".join([
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
        f"  -> {r['rule']}",
        f"  recommended: python train.py {' '.join(r['overrides'])}  (head rate {r['lr_head']:g}, backbone rate "
        f"{r['lr_backbone'] if r['lr_backbone'] is not None else '-'}, BN of training stages {r['bn_trainable']})",
        f"  expected test/acc: {r['expected_test_acc'][0]:.3f} to {r['expected_test_acc'][1]:.3f}"])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def run(cfg: DictConfig) -> dict:
    config.check(cfg)
    advice = measure(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "advice.json").write_text(json.dumps(advice, indent=1))
    f, r = advice["figures"], advice["recommendation"]
    metrics = ({f"advise/{k}": v for k, v in f.items() if isinstance(v, (int, float))}
               | {f"advise/domain_distance/{k}": v for k, v in f["domain_distance"].items()}
               | {"advise/expected_low": r["expected_test_acc"][0], "advise/expected_high": r["expected_test_acc"][1]})
    try:
        for logger in build_loggers(cfg.logger, str(out), "advise", cfg.get("group"), ["advise"]):
            logger.log_hyperparams({"advice": advice})
            logger.log_metrics(metrics)
            logger.finalize("success")
    finally:
        finish_wandb(0)
    print(describe(advice))
    return advice


def main() -> None:
    """Console script: runs write under logs/advise/ (``task_name=advise``) unless the command line says otherwise."""
    if not any(arg.startswith("task_name=") for arg in sys.argv[1:]):
        sys.argv.append("task_name=advise")
    run()


if __name__ == "__main__":
    main()
