"""The transfer strategies, one module each, and ``STRATEGIES``: the one registry of their names.

A strategy differs from the shared base (``tlexp.module.TransferModule``) only in its freeze
plan (which stages train from which epoch, at which rate), its initialisation or its loss.
Configs name a class here (``_target_: tlexp.strategies.Gradual``); the report, the search
spaces and the tests take the names and their order from ``REGISTRY`` (``NAMES``, ``STRATEGIES``).
"""

from importlib import import_module

REGISTRY = (("scratch", "Scratch"), ("frozen", "Frozen"), ("partial", "Partial"), ("full", "Full"), ("gradual", "Gradual"),
            ("discriminative", "Discriminative"), ("reinit", "Reinit"), ("l2sp", "L2SP"), ("distill", "Distill"), ("lora", "Lora"),
            ("lwf", "LwF"), ("dann", "DANN"), ("pseudo_label", "PseudoLabel"),
            ("lpft", "LPFT"), ("bss", "BSS"), ("bitfit", "BitFit"), ("ssf", "SSF"), ("surgical", "Surgical"))
"""(name, class) of every strategy, from the least to the most adapted backbone, then those added since (at the end, so
that every strategy keeps its colour in the report); the order the report draws them in. A strategy's name is its
module's (``tlexp.strategies.pseudo_label.PseudoLabel``). Names only: reading them imports no torch (the report)."""

NAMES = tuple(name for name, _ in REGISTRY)
_MODULE_OF = {cls: name for name, cls in REGISTRY}


def __getattr__(attribute: str):
    """The classes, and ``STRATEGIES`` (name -> class), imported when first asked for (PEP 562), so that the names
    above cost no torch import; configs name a class here (``_target_: tlexp.strategies.Gradual``)."""
    if attribute == "STRATEGIES":
        value = {name: __getattr__(cls) for name, cls in REGISTRY}
    elif attribute in _MODULE_OF:
        value = getattr(import_module(f"{__name__}.{_MODULE_OF[attribute]}"), attribute)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    globals()[attribute] = value
    return value


def strategy_name(cls: type) -> str:
    """A strategy class's name in ``STRATEGIES`` (``PseudoLabel`` -> ``pseudo_label``); another class: its name in lower case."""
    registered = _MODULE_OF.get(cls.__name__)
    return registered if registered and __getattr__(cls.__name__) is cls else cls.__name__.lower()


def target_name(node) -> str:
    """``tlexp.strategies.Gradual`` -> ``gradual``: the short name of a config node's class, as ``strategy_name``, from
    the text alone (also for a ``_target_`` that does not import)."""
    name = node._target_.rsplit(".", 1)[-1]
    return _MODULE_OF.get(name, name.lower())


__all__ = ["NAMES", "REGISTRY", "STRATEGIES", "BSS", "DANN", "L2SP", "LPFT", "SSF", "BitFit", "Discriminative", "Distill", "Frozen",
           "Full", "Gradual", "Lora", "LwF", "Partial", "PseudoLabel", "Reinit", "Scratch", "Surgical", "strategy_name", "target_name"]
