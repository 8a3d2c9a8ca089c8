"""Several trained models of one configuration, served as one: the mean of their posteriors.

Independently trained seeds of one recipe make different mistakes, and averaging their
posteriors (a deep ensemble) lifts accuracy where each alone is unsure, on input none was
trained for as well (docs/method.md, "Ensembles of three and two seeds"). Each member runs its
own forward, gates and conflict rule; the ensemble averages what comes out, so everything
downstream (the engine, the runner, the evaluations, the diagnostics) sees one
``FusionOutput``. Members must share one ``ModelConfig``: the preprocessing holds no learned
state, so the first member's serves all, and it runs once per batch, not once per member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from udml_stream.errors import CheckpointError
from udml_stream.model.fusion import FusionNet, FusionOutput, ModelConfig
from udml_stream.model.rules import FusionRule
from udml_stream.model.rules.udml import LOOKS_PROB
from udml_stream.model.rules.weighting import heads_disagree


def _mean_posterior_logits(logits: Sequence[Tensor]) -> Tensor:
    """log of the mean of the members' softmax posteriors (fp32, so near-ties stay apart)."""
    p = torch.stack([torch.softmax(x.float(), dim=1) for x in logits]).mean(dim=0)
    return torch.log(p.clamp_min(1e-12))


def _mean(xs: Sequence[Tensor]) -> Tensor:
    return torch.stack([x.float() for x in xs]).mean(dim=0)


#: More than this share of the members must be able to judge a stream's orientation. Chosen on
#: the validation split (``training.probe_diagnose --split val``): with more than half, all
#: three turns were found and clean input and every training family stayed silent; requiring
#: every member never found a camera turned 90° counter-clockwise.
LOOKS_QUORUM = 0.5


def _looks(probs: Sequence[Tensor], may_judge: Sequence[Tensor]) -> Tensor:
    """Per sample, the transform the members' mean posterior names (``looks/<m>``), where it is
    sure (``LOOKS_PROB``) and most members may judge the stream (open, calibrated); else −1.

    The ensemble's own judgement, as its answer is the mean of the members' posteriors. A vote
    of the members' own ``looks`` either judged fewer turned frames than one member alone (a
    strict majority of all members) or let one member's guess on a blurred frame through (a
    majority of those that judged: 46 of 300 test frames pixelated in 7 px blocks named upside
    down, against 18 by the mean posterior and 3 by one member alone)."""
    p = torch.stack([x.float() for x in probs]).mean(dim=0)  # [B, transforms]
    judge = torch.stack([x.float() for x in may_judge]).mean(dim=0) > LOOKS_QUORUM
    p_top, k_top = p.max(dim=1)
    return torch.where(judge & (p_top >= LOOKS_PROB), k_top.float(),
                       torch.full_like(p_top, -1.0))


class Ensemble(nn.Module):
    """``members`` (``FusionNet``\\ s of one configuration) answering as one model.

    Fused and per-stream posteriors are the members' means (returned as log-probabilities);
    weights, effective multipliers, σ̂, dependency and each stream's openness under the gates are
    the members' means; a stream's ``looks`` is what the members' mean transform posterior
    names where most of them may judge it (``_looks``); a conflict is the averaged per-stream
    posteriors of present streams naming different classes where some member's conflict rule
    answered.
    """

    def __init__(self, members: Sequence[FusionNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise CheckpointError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0].cfg.to_dict()
        for i, m in enumerate(members[1:], start=1):
            if m.cfg.to_dict() != first:
                diff = sorted(k for k, v in m.cfg.to_dict().items() if first.get(k) != v)
                raise CheckpointError(f"ensemble member {i} has another model configuration "
                                      f"than member 0 (differs in {diff}); members must be "
                                      "seeds of one recipe")
        self.members = nn.ModuleList(members)

    # What the engine, the runner and the evaluations read from a model.

    @property
    def cfg(self) -> ModelConfig:
        """The members' shared configuration."""
        return self.members[0].cfg

    @property
    def rule(self) -> FusionRule:
        """The members' fusion rule."""
        return self.members[0].rule

    @property
    def prep(self) -> nn.ModuleDict:
        """The preprocessing (stateless and configured alike in every member)."""
        return self.members[0].prep

    @property
    def dependency_ema(self) -> Tensor:
        """The members' mean dependency statistics (also tells the model's device)."""
        return torch.stack([m.dependency_ema for m in self.members]).mean(dim=0)

    def input_valid(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """As ``FusionNet.input_valid`` (the members measure it alike)."""
        return self.members[0].input_valid(inputs)

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None = None,
        levels: Mapping[str, Tensor] | None = None,
        quality_on: bool = True,
        preprocessed: bool = False,
        valid: Mapping[str, Tensor] | None = None,
    ) -> FusionOutput:
        """Every member on the batch (arguments as ``FusionNet.forward``), combined."""
        if not preprocessed:
            # The preprocessing is the same in every member: run it once, not once per member.
            valid = self.input_valid(inputs) if valid is None else valid
            inputs = {m: self.prep[m](x) if m in self.prep else x for m, x in inputs.items()}
            preprocessed = True
        outs = [m(inputs, present, levels, quality_on, preprocessed, valid)
                for m in self.members]
        first = outs[0]
        ms = list(first.unimodal_logits)
        uni = {m: _mean_posterior_logits([o.unimodal_logits[m] for o in outs]) for m in ms}
        aux: dict[str, Tensor] = {}
        for m in ms:
            if all(f"gate/{m}" in o.aux for o in outs):
                aux[f"gate/{m}"] = _mean([o.aux[f"gate/{m}"] for o in outs])
            if all(f"transform_p/{m}" in o.aux for o in outs):
                aux[f"looks/{m}"] = _looks([o.aux[f"transform_p/{m}"] for o in outs],
                                           [o.aux[f"may_judge/{m}"] for o in outs])
        if all("head_logits" in o.aux for o in outs):  # the fused head's own answer
            aux["head_logits"] = _mean_posterior_logits([o.aux["head_logits"] for o in outs])
        if ms and all("conflict" in o.aux for o in outs):
            # The averaged heads disagree, and some member's conflict rule answered (none does
            # before the gates are calibrated, or where every present stream is closed).
            disagree = heads_disagree(torch.stack([uni[m].argmax(dim=1) for m in ms], dim=1),
                                      torch.stack([first.present[m] for m in ms], dim=1))
            answered = torch.stack([o.aux["conflict"] for o in outs]).any(dim=0)
            aux["conflict"] = disagree & answered
        return FusionOutput(
            _mean_posterior_logits([o.logits for o in outs]), uni,
            {m: _mean([o.weights[m] for o in outs]) for m in first.weights}, first.present,
            {m: _mean([o.multipliers[m] for o in outs]) for m in first.multipliers},
            {m: _mean([o.sigma_hat[m] for o in outs]) for m in first.sigma_hat},
            {m: _mean([o.dependency[m] for o in outs]) for m in first.dependency}, aux)
