"""Parameter-efficient strategies (``Lora``, ``BitFit``, ``SSF``): the pretrained backbone never trains, a few
parameters in it do, with the new head.

Those parameters (new ones a strategy added, or some of the backbone's own) move out of each backbone stage into a
stage of their own right after it, ``<stage><suffix>`` (``stages.split_off``), so the freeze plan says it all: the
backbone's stages never train (their BatchNorm follows ``bn_policy``, eval mode by default), the split-off stages and
the head train from the start. One mechanism, so that freezing, rates, checkpoints and the trainable count in
``result.json`` are the plan's, as for every other strategy.
"""

from __future__ import annotations

from tlexp.module import TransferModule, stage_factors
from tlexp.stages import HEAD, split_off


class ParameterEfficient(TransferModule):
    """The parameters ``trains_alone`` picks train, at ``trained_rate()`` in the top split-off stage down to
    ``trained_rate() * lr_ratio`` in the lowest (or ``lr_decay`` per stage), the head at ``lr_head``; nothing else."""

    suffix: str
    """The split-off stages' names: ``<stage><suffix>``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stages = split_off(self.stages, self.suffix, self.trains_alone)

    @staticmethod
    def trains_alone(param_name: str) -> bool:
        """Whether the backbone parameter ``param_name`` (as the backbone names it) trains."""
        raise NotImplementedError

    def trained_rate(self) -> float:
        """The top split-off stage's base rate."""
        return self.hparams.lr_backbone

    @property
    def trained_stages(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.name.endswith(self.suffix)]

    def start_epochs(self):
        trained = {HEAD, *self.trained_stages}
        return {stage.name: 0 if stage.name in trained else None for stage in self.stages}

    def stage_lrs(self):
        """The split-off stages at ``trained_rate()`` times their ``stage_factors`` (top first); the backbone's own
        stages never train (their rate is only a placeholder the plan requires)."""
        rates = {stage.name: self.hparams.lr_backbone for stage in self.stages}
        trained = list(reversed(self.trained_stages))
        factors = stage_factors(len(trained), self.hparams.lr_ratio, self.hparams.lr_decay)
        rates.update({name: self.trained_rate() * factor for name, factor in zip(trained, factors)})
        rates[HEAD] = self.hparams.lr_head
        return rates
