"""The transfer strategies, one module each, and ``STRATEGIES``: the one registry of their names.

A strategy differs from the shared base (``tlexp.module.TransferModule``) only in its freeze
plan (which stages train from which epoch, at which rate), its initialisation or its loss.
Configs name a class here (``_target_: tlexp.strategies.Gradual``); the report, the search
spaces and the tests take the names and their order from ``STRATEGIES``.
"""

from tlexp.strategies.dann import DANN
from tlexp.strategies.discriminative import Discriminative
from tlexp.strategies.distill import Distill
from tlexp.strategies.frozen import Frozen
from tlexp.strategies.full import Full
from tlexp.strategies.gradual import Gradual
from tlexp.strategies.l2sp import L2SP
from tlexp.strategies.lora import Lora
from tlexp.strategies.lwf import LwF
from tlexp.strategies.partial import Partial
from tlexp.strategies.pseudo_label import PseudoLabel
from tlexp.strategies.reinit import Reinit
from tlexp.strategies.scratch import Scratch

STRATEGIES = {cls.__name__.lower(): cls for cls in (Scratch, Frozen, Partial, Full, Gradual, Discriminative, Reinit, L2SP,
                                                    Distill, Lora, LwF, DANN)} | {"pseudo_label": PseudoLabel}
"""name -> class, from the least to the most adapted backbone; the order the report draws them in. A name is
its class's in lower case, or given where that would not read (``pseudo_label``)."""

__all__ = ["DANN", "L2SP", "STRATEGIES", "Discriminative", "Distill", "Frozen", "Full", "Gradual", "Lora", "LwF", "Partial",
           "PseudoLabel", "Reinit", "Scratch"]
