"""The new classifier put on top of the backbone's pooled features."""

from __future__ import annotations

from torch import nn

HEADS = ("linear", "mlp")


def build_head(kind: str, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.0) -> nn.Module:
    """A linear probe, or a one-hidden-layer MLP for classes the frozen features do not separate linearly."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
    from tlexp.errors import InvalidValue

    raise InvalidValue("head", kind, " or ".join(HEADS))
