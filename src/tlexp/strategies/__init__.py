"""The transfer strategies, one module each, and ``STRATEGIES``: the one registry of their names.

A strategy differs from the shared base (``tlexp.module.TransferModule``) only in its freeze
plan (which stages train from which epoch, at which rate), its initialisation or its loss.
Configs name a class here (``_target_: tlexp.strategies.Gradual``); the report, the search
spaces and the tests take the names and their order from ``STRATEGIES``.
"""

from tlexp.strategies.bitfit import BitFit
from tlexp.strategies.bss import BSS
from tlexp.strategies.dann import DANN
from tlexp.strategies.discriminative import Discriminative
from tlexp.strategies.distill import Distill
from tlexp.strategies.frozen import Frozen
from tlexp.strategies.full import Full
from tlexp.strategies.gradual import Gradual
from tlexp.strategies.l2sp import L2SP
from tlexp.strategies.lora import Lora
from tlexp.strategies.lpft import LPFT
from tlexp.strategies.lwf import LwF
from tlexp.strategies.partial import Partial
from tlexp.strategies.pseudo_label import PseudoLabel
from tlexp.strategies.reinit import Reinit
from tlexp.strategies.scratch import Scratch
from tlexp.strategies.ssf import SSF
from tlexp.strategies.surgical import Surgical

STRATEGIES = {cls.__name__.lower(): cls for cls in (Scratch, Frozen, Partial, Full, Gradual, Discriminative, Reinit, L2SP,
                                                    Distill, Lora, LwF, DANN)} | {"pseudo_label": PseudoLabel} | {
    cls.__name__.lower(): cls for cls in (LPFT, BSS, BitFit, SSF, Surgical)}
"""name -> class, from the least to the most adapted backbone, then those added since (at the end, so that every
strategy keeps its colour in the report); the order the report draws them in. A name is its class's in lower case, or
given where that would not read (``pseudo_label``)."""


def strategy_name(cls: type) -> str:
    """A strategy class's name in ``STRATEGIES`` (``PseudoLabel`` -> ``pseudo_label``); another class: its name in lower case."""
    return next((short for short, registered in STRATEGIES.items() if registered is cls), cls.__name__.lower())


def target_name(node) -> str:
    """``tlexp.strategies.Gradual`` -> ``gradual``: the short name of a config node's class, as ``strategy_name``, from
    the text alone (also for a ``_target_`` that does not import)."""
    name = node._target_.rsplit(".", 1)[-1]
    return next((short for short, cls in STRATEGIES.items() if cls.__name__ == name), name.lower())

__all__ = ["BSS", "DANN", "L2SP", "LPFT", "SSF", "STRATEGIES", "BitFit", "Discriminative", "Distill", "Frozen", "Full", "Gradual",
           "Lora", "LwF", "Partial", "PseudoLabel", "Reinit", "Scratch", "Surgical", "strategy_name", "target_name"]
