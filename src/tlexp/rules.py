"""What a parameter accepts, declared once, beside the parameter: ``Annotated[float, Rule(...)]``.

A class that derives from ``Checked`` has its ``__init__`` arguments checked against the ``Rule`` in their
annotations before any ``__init__`` runs (nothing is built from a value it refuses), raising
``InvalidValue(parameter, value, accepted)``. The config layer (``tlexp.config.check``) reads the same
declarations from a ``_target_``'s signature, up the class hierarchy, and applies them to the config's values
before anything at all is built (the backbone's weights included), naming the full key::

    class Gradual(TransferModule):
        def __init__(self, *args, unfreeze_by: Annotated[float, Rule("a share of trainer.max_epochs in (0, 1]",
                                                                    lambda v: number(v) and 0 < v <= 1)] = 0.25, ...

A parameter belongs to the first class up the hierarchy whose ``__init__`` names it (the one that receives the
value); its rule is the one that class declares. Rules that need the built objects (a depth against the
backbone's stage count) stay in the class's body, which raises ``InvalidValue`` itself; a ``Rule`` with
``refined=True`` is the part of such a rule that the config can judge beforehand (``config.check`` applies it,
construction leaves the parameter to the class's own, more precise, check).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from omegaconf import OmegaConf

from tlexp.errors import InvalidValue

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class Rule:
    """What a parameter accepts: ``accepted`` says it (the error message's words; or a function that returns them),
    ``test`` decides it.

    ``each``: the parameter holds a mapping (or None) and the rule applies to every value (errors name
    ``<parameter>.<key>``). ``refined``: the class checks the parameter itself once it has built what the
    rule depends on (see the module docstring); only ``tlexp.config.check`` applies this rule."""

    accepted: str | Callable[[], str]
    test: Callable[[object], bool]
    each: bool = False
    refined: bool = False

    def says(self) -> str:
        """``accepted``; a callable one (costly to say, as torch.compile's backends) is called only for an error."""
        return self.accepted if isinstance(self.accepted, str) else self.accepted()

    def check(self, name: str, value) -> None:
        """Raise ``InvalidValue`` naming ``name`` (or ``name.<key>`` for a rule on each value) unless accepted."""
        value = plain(value)
        if not self.each:
            if not self.test(value):
                raise InvalidValue(name, value, self.says())
            return
        if value is None:
            return
        if not isinstance(value, Mapping):
            raise InvalidValue(name, value, f"null or a mapping whose every value is {self.says()}")
        for key, entry in value.items():
            if not self.test(entry):
                raise InvalidValue(f"{name}.{key}", entry, self.says())


def plain(value):
    """An OmegaConf container as plain Python (as Hydra passes mappings and lists to a class); anything else as is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# --- the common rules -------------------------------------------------------------------------------

def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def integer(minimum: int, accepted: str | None = None, refined: bool = False) -> Rule:
    return Rule(accepted or f"an integer >= {minimum}", lambda v: is_integer(v, minimum), refined=refined)


def choice(values, separator: str = ", ") -> Rule:
    return Rule(separator.join(map(str, values)), lambda v: isinstance(v, (str, bool, int, float, type(None))) and v in values)


POSITIVE_RATE = Rule("a learning rate > 0", lambda v: number(v) and v > 0)
BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
WEIGHT = Rule("a weight >= 0", lambda v: number(v) and v >= 0)
TEMPERATURE = Rule("a temperature > 0", lambda v: number(v) and v > 0)


# --- reading the declarations -----------------------------------------------------------------------

def signature_chain(target: Callable) -> tuple[list[tuple[Callable, inspect.Signature]], bool]:
    """(owner, signature) of each ``__init__`` a call of ``target`` goes through, most derived first, following
    ``**kwargs`` up the class hierarchy (a function: itself); and whether the last one takes any keyword."""
    if not inspect.isclass(target):
        signature = inspect.signature(target)
        return [(target, signature)], any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    chain = []
    for owner in target.__mro__:
        if "__init__" not in vars(owner):
            continue
        signature = inspect.signature(vars(owner)["__init__"])
        chain.append((owner, signature))
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return chain, False
    return chain, True


def _rule(annotation, owner: Callable) -> Rule | None:
    """The ``Rule`` in an ``Annotated[...]`` annotation; None for any other. An annotation written as a string (under
    ``from __future__ import annotations``) is evaluated in its module, as ``typing.get_type_hints`` does, where
    rules can be: in tlexp's code and in classes that derive from ``Checked`` (not in Lightning's, say)."""
    if isinstance(annotation, str):
        function = inspect.unwrap(vars(owner)["__init__"] if inspect.isclass(owner) else owner)
        ours = (inspect.isclass(owner) and issubclass(owner, Checked)) or owner.__module__.startswith("tlexp")
        if "Annotated[" not in annotation or not ours:
            return None
        annotation = eval(annotation, function.__globals__)
    if typing.get_origin(annotation) is not typing.Annotated:
        return None
    return next((meta for meta in annotation.__metadata__ if isinstance(meta, Rule)), None)


@functools.cache
def rules_of(target: Callable) -> dict[str, Rule]:
    """Parameter name -> its ``Rule``, for every parameter of ``target`` (up the class hierarchy) that declares one;
    a parameter's rule is the one of the first ``__init__`` that names it (the one that receives the value)."""
    rules, seen = {}, set()
    for owner, signature in signature_chain(target)[0]:
        parameters = list(signature.parameters.values())[1 if inspect.isclass(target) else 0:]  # not self
        for parameter in parameters:
            if parameter.kind not in _NAMED or parameter.name in seen:
                continue
            seen.add(parameter.name)
            rule = _rule(parameter.annotation, owner)
            if rule is not None:
                rules[parameter.name] = rule
    if rules and not (inspect.isclass(target) and issubclass(target, Checked)):
        raise TypeError(f"{target.__qualname__} declares rules ({', '.join(rules)}) but is not a tlexp.rules.Checked "
                        "class, which enforces them when it is built")
    return rules


def arguments(cls: type, args: tuple, kwargs: dict) -> dict:
    """Parameter name -> value of a call ``cls(*args, **kwargs)``, each argument given to the first ``__init__`` up
    the hierarchy that names its parameter (positional ones in order, to the named positional parameters not yet
    given: ``Lora(backbone, *args)`` passes ``backbone`` on itself and the rest to ``TransferModule``)."""
    values, positional, keywords = {}, list(args), dict(kwargs)
    for _, signature in signature_chain(cls)[0]:
        for parameter in list(signature.parameters.values())[1:]:
            if parameter.kind not in _NAMED or parameter.name in values:
                continue
            if parameter.name in keywords:
                values[parameter.name] = keywords.pop(parameter.name)
            elif parameter.kind is parameter.POSITIONAL_OR_KEYWORD and positional:
                values[parameter.name] = positional.pop(0)
    return values


class Checked:
    """Base of the classes a config node builds: the arguments of a call are checked against the rules of
    ``rules_of(cls)`` before any ``__init__`` runs (``__new__``: no frame is added between the ``__init__``
    calls, whose arguments Lightning's ``save_hyperparameters`` reads from the stack)."""

    def __new__(cls, *args, **kwargs):
        rules = rules_of(cls)
        if rules and (args or kwargs):
            for name, value in arguments(cls, args, kwargs).items():
                rule = rules.get(name)
                if rule is not None and not rule.refined:
                    rule.check(name, value)
        return super().__new__(cls)
