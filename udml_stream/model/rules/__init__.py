"""Fusion rules, one module each, and the named methods built from them.

A *rule* (``FusionRule``, see ``base``) builds its parameters on the ``FusionNet``, fuses the
per-modality embeddings and computes its own loss terms; what the training loop or the server
must do for it is a flag it declares (``needs_history``, ``needs_levels``, ``has_gates``, …).
A *method* is a rule with its options plus the training loop's per-method switch
(``noise_augment``); ``METHODS`` maps the names that configs and checkpoints use to them.

A new rule is a module here with a ``FusionRule`` subclass and one ``register_method`` line per
method below; nothing in the model, the loss or the training loop names it.
"""

from __future__ import annotations

from dataclasses import dataclass

from udml_stream.errors import ConfigError
from udml_stream.model.rules.base import FusionOutput, FusionRule, LossTerms
from udml_stream.model.rules.concat import StaticConcat
from udml_stream.model.rules.pdf import Pdf
from udml_stream.model.rules.qmf import Qmf
from udml_stream.model.rules.udml import Udml

__all__ = ["METHODS", "FusionOutput", "FusionRule", "LossTerms", "MethodSpec", "Pdf", "Qmf",
           "StaticConcat", "Udml", "register_method"]


@dataclass(frozen=True)
class MethodSpec:
    """A named method: its fusion rule (with options) and whether the training loop injects
    noise after its clean epochs."""

    fusion: FusionRule
    noise_augment: bool = True


#: Method name → spec (filled by ``register_method``; names are unique).
METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, fusion: FusionRule, noise_augment: bool = True) -> MethodSpec:
    """Register the method ``name``; a name registered twice is refused."""
    if name in METHODS:
        raise ConfigError(f"fusion method {name!r} is registered twice ({METHODS[name]} and "
                          f"{fusion}); give the new one another name")
    METHODS[name] = MethodSpec(fusion, noise_augment)
    return METHODS[name]


register_method("static_concat", StaticConcat(), noise_augment=False)
register_method("static_concat_aug", StaticConcat())
register_method("qmf", Qmf())
register_method("pdf", Pdf())
register_method("udml_no_dependency", Udml("estimator", dependency=False))
register_method("udml_no_estimator", Udml("raw_sigma"))
register_method("dependency_only", Udml("none"))
register_method("udml", Udml("estimator"))
register_method("udml_switch", Udml("estimator", switch=True))
register_method("udml_switch_no_dependency", Udml("estimator", dependency=False, switch=True))
register_method("oracle", Udml("oracle"))
