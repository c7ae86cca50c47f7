"""Multi-expert coefficient rules (tcube.core.multi): each reduces to its pair rule at K = 1, and behaves per task."""
from __future__ import annotations

import pytest
import torch

from tcube.core import coefficients as coef
from tcube.core import multi as rules


def _probs(b: int, c: int, seed: int) -> torch.Tensor:
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed)).mul(2).softmax(-1)


def test_multi_t3_with_one_expert_is_t3():
    p_gen, p_exp = _probs(16, 5, 0), _probs(16, 5, 1)
    w = rules.multi_t3_weights(p_gen, p_exp.unsqueeze(0), [torch.arange(5)], gamma=2.0, tau=0.1)
    lam = coef.t3_lambda(coef.js_divergence(p_gen, p_exp), gamma=2.0, tau=0.1)
    assert w.shape == (16, 1)
    torch.testing.assert_close(w[:, 0], 1 - lam)


def test_multi_dawin_with_one_expert_is_dawin():
    p_gen, p_exp = _probs(16, 5, 2), _probs(16, 5, 3)
    w = rules.multi_dawin_weights(p_gen, p_exp.unsqueeze(0))
    torch.testing.assert_close(w[:, 0], 1 - coef.dawin_lambda(p_gen, p_exp))


def test_task_mass_and_within_task_js():
    blocks = [torch.tensor([0, 1]), torch.tensor([2, 3, 4])]
    p = torch.tensor([[0.6, 0.2, 0.1, 0.05, 0.05]])
    torch.testing.assert_close(rules.task_mass(p, blocks), torch.tensor([[0.8, 0.2]]))
    # an expert that agrees with the generalist inside its task has JS 0 there, whatever it says elsewhere
    q = torch.tensor([[0.3, 0.1, 0.3, 0.15, 0.15]])
    js = rules.task_js(p, q.unsqueeze(0).expand(2, -1, -1), blocks)
    assert js[0, 0] < 1e-6 and js[0, 1] < 1e-6
    r = torch.tensor([[0.1, 0.3, 0.2, 0.2, 0.2]])
    assert rules.task_js(p, r.unsqueeze(0).expand(2, -1, -1), blocks)[0, 0] > 0.1


def test_multi_t3_weights_follow_the_generalist_task_mass():
    blocks = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    p_gen = torch.tensor([[0.7, 0.25, 0.03, 0.02], [0.02, 0.03, 0.5, 0.45]])
    p_exps = p_gen.unsqueeze(0).expand(2, -1, -1)  # both experts agree: λ_k = σ(0) = 0.5
    w = rules.multi_t3_weights(p_gen, p_exps, blocks, hard=False)
    torch.testing.assert_close(w, 0.5 * torch.tensor([[0.95, 0.05], [0.05, 0.95]]))
    hard = rules.multi_t3_weights(p_gen, p_exps, blocks)
    torch.testing.assert_close(hard, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))


def test_router_and_oracle_weights():
    blocks = [torch.tensor([0]), torch.tensor([1, 2])]
    p_gen = torch.tensor([[0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(rules.route_weights(p_gen, blocks), torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    torch.testing.assert_close(rules.route_weights(p_gen, blocks, alpha=0.2, hard=False),
                               0.8 * torch.tensor([[0.6, 0.4], [0.1, 0.9]]))
    torch.testing.assert_close(rules.oracle_weights(torch.tensor([1, 0]), 2, 0.5),
                               torch.tensor([[0.0, 0.5], [0.5, 0.0]]))


@pytest.mark.parametrize("blocks, error", [([[0, 1], [1, 2]], "shares classes"), ([[0], []], "non-empty"),
                                           ([[0], [5]], "indices into")])
def test_blocks_are_checked(blocks, error):
    with pytest.raises(ValueError, match=error):
        rules.check_blocks([torch.tensor(b, dtype=torch.long) for b in blocks], 3)
