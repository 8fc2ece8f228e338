"""What ``tlexp-advise`` measures on the data before any training: labeled images per class, a linear probe, the
transferability scores and a BatchNorm domain distance per stage, for any backbone (``advice.models`` ranks several).

- a linear probe (logistic regression) on the pretrained backbone's pooled features against the same probe
  on a randomly initialised backbone's: how much the pretrained features already know (``probe_gain``);
- on the same features, two transferability scores (``tlexp.transferability``), evidence, not the decision:
  LogME on the training features and a k-NN probe's validation accuracy;
- a source-free domain distance per stage: the symmetric KL divergence between the target images'
  per-channel statistics at each BatchNorm input and that layer's running statistics (which summarise
  the source data), averaged over channels and over the stage's BatchNorm layers.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tlexp import config
from tlexp.advice.seeds_table import recommend
from tlexp.feature_cache.dataset import compute_features
from tlexp.inference import inference_pass
from tlexp.stages import HEAD, split_stages
from tlexp.transferability import KNN_NEIGHBOURS, knn_accuracy, logme

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


def feature_scores(backbone: nn.Module, datamodule, seed: int) -> dict[str, float]:
    """The probe's validation accuracy, LogME and the k-NN probe on the backbone's pooled features."""
    train, val = (compute_features(backbone, split, datamodule.normalize) for split in (datamodule.train_set, datamodule.val_set))
    return {"probe": probe_accuracy(train, val, seed=seed), "logme": logme(train[0].numpy(), train[1].numpy()),
            "knn": knn_accuracy((train[0].numpy(), train[1].numpy()), (val[0].numpy(), val[1].numpy()))}


def measure(cfg: DictConfig) -> dict:
    """The figures on the configured model and data, and what the seeds' table makes of them."""
    backbone = config.instantiate("model", cfg.model, sources={"img_size": "data.image_size"}, img_size=cfg.data.image_size)
    torch.manual_seed(cfg.seed)
    random = config.instantiate("model", cfg.model, img_size=cfg.data.image_size, pretrained=False, weights=None)
    datamodule = config.instantiate("data", cfg.data).prepare_for(backbone)
    labels = np.asarray(datamodule.train_set.labels)
    per_class = np.bincount(labels, minlength=datamodule.num_classes)
    scores = {name: feature_scores(net, datamodule, cfg.seed) for name, net in (("pretrained", backbone), ("random", random))}
    count = min(STATISTICS_IMAGES, len(datamodule.train_set))
    images = datamodule.normalize(torch.stack([torch.as_tensor(datamodule.train_set[i][0]) for i in range(count)]))
    distance = domain_distance(backbone, images)
    stage_names = [s.name for s in split_stages(backbone, nn.Identity()) if s.name != HEAD]
    figures = {"train_size": int(len(labels)), "num_classes": datamodule.num_classes,
               "images_per_class": {"min": int(per_class.min()), "median": float(np.median(per_class)), "max": int(per_class.max())},
               "probe_acc_pretrained": scores["pretrained"]["probe"], "probe_acc_random": scores["random"]["probe"],
               "probe_gain": scores["pretrained"]["probe"] - scores["random"]["probe"],
               "logme_pretrained": scores["pretrained"]["logme"], "logme_random": scores["random"]["logme"],
               "knn_acc_pretrained": scores["pretrained"]["knn"], "knn_acc_random": scores["random"]["knn"],
               "knn_neighbours": min(KNN_NEIGHBOURS, len(labels)), "domain_distance": distance}
    return {"model": cfg.model.name, "dataset": str(cfg.data.get("name") or type(datamodule).__name__), "figures": figures,
            "seeds_table": recommend(len(labels), figures["probe_gain"], scores["pretrained"]["probe"], stage_names)}
