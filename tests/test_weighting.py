"""The UDML weighting math: M = 2 reproduces the reference formulas; M = 3; absent modalities."""

from __future__ import annotations

import torch

from udml_stream.model.fusion import dependency_statistic, udml_weights


def test_two_modalities_match_reference_formulas() -> None:
    s = torch.tensor([[1.0, 3.0], [2.0, 2.0], [5.0, 0.5]])
    both = torch.ones(3, 2, dtype=torch.bool)
    u = udml_weights(s, None, both)
    sa2, sv2 = s[:, 0] ** 2, s[:, 1] ** 2
    torch.testing.assert_close(u[:, 0], 2 * sv2 / (sa2 + sv2))
    torch.testing.assert_close(u[:, 1], 2 * sa2 / (sa2 + sv2))
    dep = torch.tensor([4.0, 1.0])
    w = udml_weights(s, dep, both)
    wa, wv = u[:, 0] / dep[0], u[:, 1] / dep[1]
    torch.testing.assert_close(w[:, 0], 2 * wa / (wa + wv))
    torch.testing.assert_close(w.sum(dim=1), torch.full((3,), 2.0))


def test_three_modalities_sum_to_m_and_follow_inverse_variance() -> None:
    s = torch.tensor([[1.0, 2.0, 4.0]])
    w = udml_weights(s, None, torch.ones(1, 3, dtype=torch.bool))
    inv = 1 / s**2
    torch.testing.assert_close(w, 3 * inv / inv.sum())
    assert w[0, 0] > w[0, 1] > w[0, 2]
    dep = torch.tensor([1.0, 1.0, 0.25])  # the head under-uses modality 3 → boost it
    wd = udml_weights(s, dep, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(wd.sum(), torch.tensor(3.0))
    assert wd[0, 2] > w[0, 2]


def test_absent_modality_gets_zero_and_is_excluded_from_the_sums() -> None:
    s = torch.tensor([[1.0, 2.0, 4.0]])
    mask = torch.tensor([[True, False, True]])
    w = udml_weights(s, torch.tensor([1.0, 2.0, 3.0]), mask)
    assert w[0, 1] == 0
    # Same as the two present modalities alone.
    w2 = udml_weights(s[:, [0, 2]], torch.tensor([1.0, 3.0]), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(w[0, [0, 2]], w2[0])
    only = udml_weights(s, None, torch.tensor([[False, False, True]]))
    torch.testing.assert_close(only, torch.tensor([[0.0, 0.0, 1.0]]))


def test_quality_off_gives_unit_weights() -> None:
    w = udml_weights(None, None, torch.ones(4, 2, dtype=torch.bool))
    torch.testing.assert_close(w, torch.ones(4, 2))


def test_dependency_statistic_is_mean_abs_logit_sum_over_present_samples() -> None:
    za = torch.tensor([[1.0, -2.0], [3.0, 0.0], [100.0, 100.0]])
    zv = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [1.0, 1.0]])
    mask = torch.tensor([[True, True], [True, True], [False, True]])
    d = dependency_statistic([za, zv], mask)
    torch.testing.assert_close(d, torch.tensor([(3.0 + 3.0) / 2, (1.0 + 1.0 + 2.0) / 3]))


def test_relative_openness_closes_a_stream_only_as_far_as_another_is_healthy() -> None:
    from udml_stream.model.rules.weighting import apply_gate, relative_openness

    g = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])  # stream 0 atypical
    health = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, True]])
    rel = relative_openness(g, health, mask)
    # The other healthy: fully closed; the other broken too: left open; half: half.
    assert torch.allclose(rel[:, 0], torch.tensor([0.0, 1.0, 0.5, 1.0]))
    assert torch.allclose(rel[:, 1], torch.ones(4))
    # An absent other stream is no alternative: the atypical one keeps its weight.
    absent = relative_openness(g[:1], health[:1], torch.tensor([[True, False]]))
    assert absent[0, 0] == 1.0
    w = torch.ones(4, 2)
    gated = apply_gate(w, rel, mask)
    assert torch.allclose(gated[0], torch.tensor([0.0, 2.0]))
    assert torch.allclose(gated.sum(dim=1), torch.full((4,), 2.0))


def test_a_conflict_is_decided_by_the_gated_product_of_the_stream_posteriors() -> None:
    from udml_stream.model.rules.weighting import resolve_conflicts

    fused = torch.tensor([[5.0, 0.0, 0.0]] * 5)
    # Stream 0 says class 0 (p ≈ 0.6), stream 1 says class 1 (p ≈ 0.98).
    unsure, sure = torch.tensor([1.0, 0.6, 0.0]), torch.tensor([0.0, 5.0, 0.0])
    uni = [unsure.repeat(5, 1), sure.repeat(5, 1)]
    uni[1][1] = torch.tensor([4.0, 0.0, 0.0])  # row 1: both say class 0, no conflict
    health = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    out, used = resolve_conflicts(fused, uni, health, mask)
    assert used.tolist() == [True, False, True, False, False]
    # Both open: the sharper posterior wins, and the output is the normalised product.
    assert int(out[0].argmax()) == 1
    expected = torch.log_softmax(uni[0][0], 0) + torch.log_softmax(uni[1][0], 0)
    torch.testing.assert_close(torch.log_softmax(out[0], 0), torch.log_softmax(expected, 0))
    # No conflict, every conflicting stream closed, or the other stream absent: fused stands.
    for row in (1, 3, 4):
        assert torch.equal(out[row], fused[row])
    # The gates close the sharp stream: the open one decides.
    assert int(out[2].argmax()) == 0


def test_the_conflict_rule_normalises_openness_ignores_absent_streams_and_can_be_off() -> None:
    from udml_stream.model.rules.weighting import resolve_conflicts

    g = torch.Generator().manual_seed(3)
    uni = [torch.randn(4, 5, generator=g) * 3 for _ in range(3)]
    uni[0][:, 0] += 20  # stream 0 says class 0
    uni[1][:, 1] += 20  # stream 1 says class 1
    uni[2][:, 1] += 20  # stream 2 says class 1
    fused = torch.zeros(4, 5, dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # Row 1: stream 2 absent with a NaN openness (an absent stream's gate may read NaN).
    health = torch.tensor([[1e-4, 1e-4, 1e-4], [0.5, 0.25, float("nan")], [1e-7, 1e-7, 1e-7],
                           [1.0, 1.0, 1.0]])
    out, used = resolve_conflicts(fused, uni, health, mask)
    assert out.dtype == torch.float32  # not rounded to the fused logits' bf16
    assert used.tolist() == [True, True, False, False]  # row 2 all closed, row 3 one stream
    logp = [torch.log_softmax(u, 1) for u in uni]
    # Equally (nearly) closed streams vote as equals: openness is relative to the row's most open.
    torch.testing.assert_close(out[0], logp[0][0] + logp[1][0] + logp[2][0])
    torch.testing.assert_close(out[1], logp[0][1] + 0.5 * logp[1][1])
    assert torch.equal(out[2:], fused[2:].float())
    off, none = resolve_conflicts(fused, uni, health, mask, on=torch.tensor(False))
    assert not none.any() and torch.equal(off, fused.float())
