"""One way to run a model over data without training it: the passes over a whole data set (predicting
pseudo-labels, encoding cached features, the frozen prefix's activations, advise's probes, layer movement).

Such a pass must hold no memory per batch beyond its output: no autograd graph may be kept. Lightning runs
validation and checkpoint hooks under ``torch.inference_mode()``, whose tensors cannot become training targets
later, so passes that may run there leave it with ``torch.inference_mode(False)``; but that *re-enables*
gradient tracking, also inside an outer ``torch.no_grad()``, and each batch then keeps its graph (a
pseudo-label pass over 59,000 images grew to 23 GB). ``inference_pass`` pairs the two in the one order
that works.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def inference_pass(*modules: nn.Module):
    """Every module in ``modules`` in eval mode (dropout off, BatchNorm on its running statistics), no autograd,
    plain (not inference) tensors, also when entered inside Lightning's inference mode; every submodule's own
    mode is restored afterwards (the freeze plan's per-layer BatchNorm modes among them)."""
    modes = {module: module.training for root in modules for module in root.modules()}
    for root in modules:
        root.eval()
    try:
        with torch.inference_mode(False), torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training
