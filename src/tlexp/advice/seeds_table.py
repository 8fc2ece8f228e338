"""The seeds' decision table (data size x domain similarity), kept as one piece of ``tlexp-advise``'s evidence,
labelled with its measured record: it is not the decision (the pocket race is, ``advice.pocket_race``)."""

from __future__ import annotations

SMALL, LARGE = 1_000, 10_000
"""The decision table's data sizes: small below 1K labeled images, large above 10K (medium between)."""
CLOSE_GAIN = 0.10
"""Domain similarity is high when the pretrained probe beats the random-feature probe by this much."""
CLOSED_ERROR = (0.13, 0.83)
"""Share of the probe's remaining error the best fine-tuning strategy closed in tlexp's confirmed studies
(Fashion-MNIST 1 %: 0.783 -> 0.811; digits: 0.837 -> 0.973): the expected range's two ends."""
RECORD = ("wrong on 3 of the 3 tasks it was checked on (3 seeds each): frozen at Fashion-MNIST 1 % (2.8 points "
          "behind full), gradual at 10 % (2.7 behind partial), gradual on digits (2.2 behind full); docs/studies.md")
"""The table's measured record, printed beside what it says."""


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
