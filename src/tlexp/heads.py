"""The new classifier put on top of the backbone's pooled features."""

from __future__ import annotations

from torch import nn

from tlexp.rules import Rule

HEADS = ("linear", "mlp")
HEAD_KIND = Rule(" or ".join(HEADS), lambda v: v in HEADS)
"""What ``strategy.head`` (``TransferModule``'s ``head``) accepts."""


def build_head(kind: str, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.0) -> nn.Module:
    """A linear probe, or a one-hidden-layer MLP for classes the frozen features do not separate linearly."""
    HEAD_KIND.check("head", kind)  # also for a kind read back from a file (tlexp.export)
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
    )
