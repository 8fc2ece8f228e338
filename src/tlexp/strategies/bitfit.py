"""BitFit (Ben Zaken et al., ACL 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models"): only the backbone's biases train, with the new head; every other backbone weight keeps its
pretrained value bit for bit.

Every backbone parameter named ``bias`` is one: convolutions' and linear layers' where they have one, LayerNorm's,
and BatchNorm's shift (beta). EfficientNet-Lite0's convolutions have none (a BatchNorm follows each), so there the
BatchNorm betas are the biases BitFit trains. BatchNorm's scale (gamma) and running statistics stay in the frozen
backbone stages: the statistics follow ``bn_policy`` (``frozen``: eval mode, untouched), gamma does not train (unless
``bn_policy=train``, which trains the affine weights of frozen stages).
"""

from __future__ import annotations

from tlexp.strategies.parameter_efficient import ParameterEfficient


class BitFit(ParameterEfficient):
    """The backbone's biases (a ``<stage>.biases`` stage after each backbone stage) at ``lr_backbone`` at the top
    stage down to ``lr_backbone * lr_ratio`` at the lowest, the new head at ``lr_head``; nothing else trains."""

    suffix = ".biases"

    @staticmethod
    def trains_alone(param_name: str) -> bool:
        return param_name.rpartition(".")[2] == "bias"
