"""EA-Adam stage A core: preference vectors, gradient mixing, variation, selection, fitness, EA phase."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perceptsr.archs import build_arch
from perceptsr.data import imresize, write_image
from perceptsr.ea_adam import (
    EvalSet,
    FitnessEvaluator,
    L1Fitness,
    MetricFitness,
    MOEADSelector,
    NSGA2Selector,
    PerceptualFitness,
    VariationConfig,
    build_eval_set,
    crowding_distance,
    gaussian_mutation,
    make_child,
    neighbourhoods,
    non_dominated_sort,
    normalised_gradient_mix,
    preference_vectors,
    run_ea_phase,
    sbx_beta,
    sbx_crossover,
    tchebycheff,
)
from perceptsr.losses import PerceptualLoss

# ----------------------------------------------------------------------------- shared tiny setup


def _perceptual_loss() -> PerceptualLoss:
    return PerceptualLoss({"conv1_2": 1.0}, vgg_type="vgg16", weights=None,
                          generator=torch.Generator().manual_seed(0))


def _tiny_model(seed: int | None = None) -> nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    return build_arch("msrresnet", num_feat=8, num_block=1, upscale=4)


def _tiny_eval_set(seed: int = 0, images: int = 2, patches: int = 3) -> EvalSet:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(images * patches, 3, 32, 32, generator=g)
    lr = imresize(hr, 0.25)
    return EvalSet(lr, hr, torch.arange(images).repeat_interleave(patches))


def _tiny_states(n: int = 4) -> list[dict[str, torch.Tensor]]:
    return [_tiny_model(100 + k).state_dict() for k in range(n)]


def _tiny_evaluator(batch_size: int = 4) -> FitnessEvaluator:
    return FitnessEvaluator(_tiny_eval_set(), [L1Fitness(), PerceptualFitness(_perceptual_loss())],
                            batch_size=batch_size)


# ----------------------------------------------------------------------------- population layout


def test_preference_vectors_and_neighbourhoods():
    lam = preference_vectors(5)
    assert lam.dtype == torch.float64
    assert lam.tolist() == [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]]
    assert preference_vectors(2).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert neighbourhoods(5) == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    assert neighbourhoods(7, 5)[0] == [0, 1, 2, 3, 4] and neighbourhoods(7, 5)[6] == [2, 3, 4, 5, 6]
    assert neighbourhoods(7, 5)[3] == [1, 2, 3, 4, 5]
    assert all(i in nb for i, nb in enumerate(neighbourhoods(6, 3)))
    with pytest.raises(ValueError):
        preference_vectors(1)
    with pytest.raises(ValueError):
        neighbourhoods(2, 3)


# ----------------------------------------------------------------------------- gradient mixing


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(3, 4)
        self.head_a = nn.Linear(4, 1)  # used by objective A only
        self.head_b = nn.Linear(4, 1)  # used by objective B only
        self.unused = nn.Parameter(torch.ones(2))


def _losses(m: _TwoHeads, x: torch.Tensor):
    h = torch.tanh(m.body(x))
    return (m.head_a(h) - 1).abs().mean(), 3.0 * m.head_b(h).pow(2).mean() + 0.1 * m.body.weight.sum()


def test_normalised_mix_matches_hand_computation():
    m = _TwoHeads()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    lam = (0.25, 0.75)
    eps = 1e-7
    names = [n for n, _ in m.named_parameters()]
    params = list(m.parameters())
    expected = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    for k, w in enumerate(lam):
        grads = torch.autograd.grad(_losses(m, x)[k], params, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                expected[n] += w * g / (g.norm() + eps)
    norms = normalised_gradient_mix(m, list(_losses(m, x)), lam, eps=eps)
    assert norms.shape == (2, len(params))
    for n, p in m.named_parameters():
        if n == "unused":
            assert p.grad is None  # no objective reaches it
            continue
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-6, atol=1e-8)
    # per tensor: a tensor reached by one objective only has norm lam * 1
    assert math.isclose(float(m.head_a.weight.grad.norm()), 0.25, rel_tol=1e-5)
    assert math.isclose(float(m.head_b.bias.grad.norm()), 0.75, rel_tol=1e-5)
    assert torch.isnan(norms[0, names.index("head_b.weight")])  # objective A gives it no gradient
    torch.optim.Adam(m.parameters(), lr=1e-3).step()  # a standard step works on the mixed .grad


def test_normalised_mix_skips_zero_weight_and_overwrites_grad():
    m = _TwoHeads()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    for p in m.parameters():
        p.grad = torch.full_like(p, 99.0)  # stale values must be overwritten, not accumulated
    la, lb = _losses(m, x)
    g = torch.autograd.grad(la, [m.body.weight], retain_graph=True)[0]
    normalised_gradient_mix(m, [la, lb], [1.0, 0.0])
    torch.testing.assert_close(m.body.weight.grad, g / (g.norm() + 1e-7))
    assert m.head_b.weight.grad is None and m.unused.grad is None
    # expanded gradients (d sum / dp) are handled without in-place errors
    p = nn.Parameter(torch.randn(3, 3))
    normalised_gradient_mix([p], [p.sum(), (p * 2).sum()], [0.5, 0.5])
    torch.testing.assert_close(p.grad, torch.full((3, 3), 1 / 3), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- variation operators


def _pair_states():
    g = torch.Generator().manual_seed(3)
    mk = lambda: {  # noqa: E731
        "conv.weight": torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64),
        "conv.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "bn.running_mean": torch.randn(4, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    return mk(), mk()


def test_sbx_formula_fixed_u_and_buffers_copied():
    assert sbx_beta(0.25, 20) == pytest.approx(0.5 ** (1 / 21))
    assert sbx_beta(0.75, 20) == pytest.approx(0.5 ** (-1 / 21))
    assert sbx_beta(0.5, 20) == pytest.approx(1.0)
    torch.testing.assert_close(sbx_beta(torch.tensor([0.25, 0.75], dtype=torch.float64), 20),
                               torch.tensor([0.5 ** (1 / 21), 0.5 ** (-1 / 21)], dtype=torch.float64))
    p, m = _pair_states()
    child = sbx_crossover(p, m, u=[0.25, 0.9])  # conv.weight, conv.bias (key order)
    b_w, b_b = 0.5 ** (1 / 21), (2 - 1.8) ** (-1 / 21)
    torch.testing.assert_close(child["conv.weight"], 0.5 * ((1 + b_w) * p["conv.weight"] + (1 - b_w) * m["conv.weight"]))
    torch.testing.assert_close(child["conv.bias"], 0.5 * ((1 + b_b) * p["conv.bias"] + (1 - b_b) * m["conv.bias"]))
    for k in ("bn.running_mean", "bn.num_batches_tracked"):
        assert torch.equal(child[k], p[k])
        assert child[k].data_ptr() != p[k].data_ptr()  # a copy, not an alias
    # u = 0.5 gives beta = 1: the child is the parent
    same = sbx_crossover(p, m, u=[0.5, 0.5])
    torch.testing.assert_close(same["conv.weight"], p["conv.weight"])
    # a generator draws one u per crossed tensor, in key order, as one float64 batch
    us = torch.rand(2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    a = sbx_crossover(p, m, generator=torch.Generator().manual_seed(9))
    b = sbx_crossover(p, m, u=us)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gaussian_mutation_rate_and_keys():
    g = torch.Generator().manual_seed(4)
    state = {"body.weight": torch.zeros(200_000), "body.bias": torch.zeros(100), "bn.running_var": torch.ones(10)}
    out = gaussian_mutation(state, p_element=0.02, sigma=0.03, generator=g)
    changed = out["body.weight"] != 0
    rate = changed.double().mean().item()
    assert abs(rate - 0.02) < 5 * math.sqrt(0.02 * 0.98 / 200_000)
    std = out["body.weight"][changed].std().item()
    assert abs(std - 0.03) < 0.03 * 0.05
    assert torch.equal(out["body.bias"], state["body.bias"]) and torch.equal(out["bn.running_var"], state["bn.running_var"])
    assert bool((state["body.weight"] == 0).all())  # input untouched
    again = gaussian_mutation(state, p_element=0.02, sigma=0.03, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again["body.weight"], out["body.weight"])  # deterministic


def test_make_child_bias_revert_quirk():
    p, m = _pair_states()
    pop = [p, m]
    common = dict(p_crossover=1.0, p_mutation=1.0, p_element=0.0)  # mutation fires but changes nothing
    fixed, info = make_child(pop, 0, [0, 1], generator=torch.Generator().manual_seed(5), **common)
    quirk, _ = make_child(pop, 0, [0, 1], generator=torch.Generator().manual_seed(5),
                          faithful_bias_revert=True, **common)
    assert info.crossover and info.mutation and info.mate == 1
    assert torch.equal(fixed["conv.weight"], quirk["conv.weight"])
    assert not torch.allclose(fixed["conv.weight"], p["conv.weight"])
    assert torch.equal(quirk["conv.bias"], p["conv.bias"])  # release: bias reverts to parent i
    assert not torch.allclose(fixed["conv.bias"], p["conv.bias"])  # fixed: the crossed bias is kept
    # without mutation the flag changes nothing
    a, _ = make_child(pop, 0, [0, 1], generator=torch.Generator().manual_seed(5), p_crossover=1.0, p_mutation=0.0)
    b, _ = make_child(pop, 0, [0, 1], generator=torch.Generator().manual_seed(5), p_crossover=1.0,
                      p_mutation=0.0, faithful_bias_revert=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_make_child_mate_pools_and_copy():
    pop = [{"w.weight": torch.full((2,), float(k))} for k in range(6)]
    g = torch.Generator().manual_seed(6)
    mates_nb = {make_child(pop, 2, [1, 2, 3], generator=g, p_crossover=1.0, p_neighbour=1.0)[1].mate
                for _ in range(40)}
    assert mates_nb == {1, 3}
    mates_all = {make_child(pop, 2, [1, 2, 3], generator=g, p_crossover=1.0, p_neighbour=0.0)[1].mate
                 for _ in range(200)}
    assert mates_all == {0, 1, 3, 4, 5}
    child, info = make_child(pop, 4, [3, 4, 5], generator=g, p_crossover=0.0, p_mutation=0.0)
    assert info.mate is None and not info.crossover and torch.equal(child["w.weight"], pop[4]["w.weight"])
    assert child["w.weight"].data_ptr() != pop[4]["w.weight"].data_ptr()


# ----------------------------------------------------------------------------- scalarisation & selection


def test_tchebycheff_by_hand_and_vectorised():
    eps = 1e-5
    v = tchebycheff([0.3, 0.8], [0.25, 0.75], [0.1, 0.5], [0.5, 1.5])
    assert float(v) == pytest.approx(max(0.25 * 0.2 / (0.4 + eps), 0.75 * 0.3 / (1.0 + eps)))
    f = torch.tensor([[0.3, 0.8], [0.1, 1.5], [0.5, 0.5]])
    w = preference_vectors(3)
    out = tchebycheff(f, w, [0.1, 0.5], [0.5, 1.5])
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx([0.2 / (0.4 + eps), 0.5 * 1.0 / (1 + eps), 0.0])
    assert tchebycheff(f[:, None], w[None], [0.1, 0.5], [0.5, 1.5]).shape == (3, 3)


def _moead3():
    sel = MOEADSelector(preference_vectors(3), neighbourhoods(3))
    sel.initialise([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    return sel


def test_moead_replaces_only_when_strictly_lower():
    sel = _moead3()
    assert sel.ideal.tolist() == [0, 0] and sel.nadir.tolist() == [1, 1]
    assert sel.offer(1, [0.5, 0.5]) == []  # equal Tchebycheff value: kept
    assert sel.offer(1, [0.4, 0.6]) == []  # g = 0.3 > 0.25 for λ=(.5,.5); worse for the others
    assert sel.offer(1, [0.45, 0.45]) == [1]  # g = 0.225 < 0.25
    assert sel.fitness[1].tolist() == [0.45, 0.45]
    assert sel.fitness[0].tolist() == [0.0, 1.0] and sel.fitness[2].tolist() == [1.0, 0.0]
    # the same value again no longer beats the stored one (strict)
    assert sel.offer(1, [0.45, 0.45]) == []


def test_moead_protected_slot_and_bounds():
    sel = MOEADSelector.uniform(3, protected={0})
    sel.initialise([[0.2, 1.0], [0.5, 0.5], [1.0, 0.2]])
    # dominates everyone: would replace all three neighbours, but slot 0 is protected
    assert sel.offer(1, [0.1, 0.1]) == [1, 2]
    assert sel.fitness[0].tolist() == [0.2, 1.0]
    assert sel.ideal.tolist() == [0.1, 0.1] and sel.nadir.tolist() == [1.0, 1.0]
    sel.offer(2, [3.0, 0.15])  # a poor child still moves the nadir (element-wise)
    assert sel.nadir.tolist() == [3.0, 1.0] and sel.ideal.tolist() == [0.1, 0.1]
    assert sel.offer(1, [float("nan"), 0.0]) == []  # non-finite: ignored, bounds unchanged
    assert sel.nadir.tolist() == [3.0, 1.0] and sel.ideal.tolist() == [0.1, 0.1]
    # the bounds move BEFORE comparing: with the old bounds slot 1 would be kept (0.3 > 0.25)
    sel2 = _moead3()
    assert sel2.offer(2, [0.6, -0.5]) == [1, 2]
    # new ideal (0, -0.5), nadir (1, 1): slot 1 g(child) = .5*.6/1 = .3 < g(F1) = .5*1/1.5 = .333;
    # slot 2 g(child) = 0 < 1*.5/1.5; slot 0 g(child) = .6 > 0
    assert sel2.ideal.tolist() == [0.0, -0.5] and sel2.nadir.tolist() == [1.0, 1.0]


def test_nsga2_sort_crowding_and_selection_by_hand():
    pts = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2, 6)]
    assert non_dominated_sort(pts) == [[0, 1, 2], [3, 5], [4]]
    d = crowding_distance([(1, 5), (2, 3), (3, 2), (4, 1)])
    assert d[0] == math.inf and d[3] == math.inf
    assert d[1].item() == pytest.approx(2 / 3 + 3 / 4) and d[2].item() == pytest.approx(2 / 3 + 1 / 2)
    assert crowding_distance([(1, 1), (2, 2)]).tolist() == [math.inf, math.inf]
    assert crowding_distance([(1, 1), (1, 2), (1, 3)])[1].item() == pytest.approx(1.0)  # flat objective adds 0
    sel = NSGA2Selector()
    sel.initialise([(1, 5), (5, 5), (2, 6)])
    # union front 0 = {(1,5), (2,3), (3,2), (4,1)}; keep 3: the two extremes and (2,3) (more crowding room)
    pairs = sel.select([0, 1, 2], [(2, 3), (3, 2), (4, 1)])
    assert pairs == [(0, 1), (2, 2)]
    assert sel.fitness.tolist() == [[1, 5], [2, 3], [4, 1]]
    prot = NSGA2Selector(protected={1})
    prot.initialise([(1, 5), (5, 5), (2, 6)])
    pairs = prot.select([0, 1, 2], [(2, 3), (3, 2), (4, 1)])
    assert all(slot != 1 for _, slot in pairs) and prot.fitness[1].tolist() == [5, 5]


# ----------------------------------------------------------------------------- evaluation set


def _write(path: Path, arr: np.ndarray) -> None:
    write_image(path, arr)


def test_build_eval_set_sorted_raster_and_keep_rule(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {name: rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for name in ("b", "a", "c")}
    for name, arr in imgs.items():  # written out of order
        _write(tmp_path / f"{name}.png", arr)
    es = build_eval_set(tmp_path, scale=4, patch_size=32, num_images=2)
    assert es.names == ("a", "b") and es.num_patches == 12 and es.image_index.tolist() == [0] * 6 + [1] * 6
    a = torch.from_numpy(imgs["a"]).permute(2, 0, 1).float() / 255
    lr_a = torch.from_numpy(imresize(imgs["a"], 0.25)).permute(2, 0, 1).float() / 255
    for k in range(6):  # raster order: 2 rows x 3 columns
        r, c = divmod(k, 3)
        assert torch.equal(es.hr[k], a[:, 32 * r:32 * r + 32, 32 * c:32 * c + 32])
        assert torch.equal(es.lr[k], lr_a[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8])
    # LR from a folder (paired by stem, x4 suffix) gives the same set when it holds the same pixels
    lr_dir = tmp_path / "lr"
    hr_dir = tmp_path / "hr"
    for name, arr in imgs.items():
        _write(hr_dir / f"{name}.png", arr)
        _write(lr_dir / f"{name}x4.png", imresize(arr, 0.25))
    es2 = build_eval_set(hr_dir, lr_dir, scale=4, patch_size=32, num_images=2)
    assert torch.equal(es2.lr, es.lr) and torch.equal(es2.hr, es.hr)
    # more than 100 patches: keep #25..#74
    big = rng.integers(0, 256, (88, 80, 3), dtype=np.uint8)  # 11 x 10 patches of 8
    _write(tmp_path / "big" / "x.png", big)
    es3 = build_eval_set(tmp_path / "big", scale=4, patch_size=8, num_images=16)
    assert es3.num_patches == 50
    big_t = torch.from_numpy(big).permute(2, 0, 1).float() / 255
    assert torch.equal(es3.hr[0], big_t[:, 16:24, 40:48])  # patch 25 = row 2, col 5
    assert torch.equal(es3.hr[-1], big_t[:, 56:64, 32:40])  # patch 74 = row 7, col 4


# ----------------------------------------------------------------------------- fitness evaluator


class _StandInNoRef(nn.Module):
    """Shape of a perceptsr no-reference, higher-is-better metric (like a Ranker score)."""

    full_reference = False
    lower_better = False
    name = "standin_nr"

    def forward(self, x, ref=None):
        assert ref is None and x.min() >= 0 and x.max() <= 1
        return x.flatten(1).mean(1)


class _StandInFR(nn.Module):
    full_reference = True
    lower_better = True
    name = "standin_mse"

    def forward(self, x, ref=None):
        return (x - ref).pow(2).flatten(1).mean(1)


def test_evaluator_no_grad_and_matches_release_averaging():
    ev = _tiny_evaluator(batch_size=4)  # batches cross image boundaries (3 patches per image)
    model = _tiny_model(1).train()
    f = ev.evaluate(model)
    assert f.shape == (2,) and f.dtype == torch.float64 and not f.requires_grad
    assert model.training  # mode restored
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # the release: one image per batch, L1 / perceptual means per image, averaged over images
    loss = _perceptual_loss()
    es = ev.eval_set
    l1s, pers = [], []
    with torch.no_grad():
        for img in range(es.num_images):
            sel = es.image_index == img
            sr = model(es.lr[sel])
            l1s.append(F.l1_loss(sr, es.hr[sel]).item())
            pers.append(loss(sr, es.hr[sel]).item())
    torch.testing.assert_close(f, torch.tensor([np.mean(l1s), np.mean(pers)], dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    # the batch size does not change the result
    torch.testing.assert_close(_tiny_evaluator(batch_size=50).evaluate(model), f, rtol=1e-5, atol=1e-7)


def test_evaluator_cached_hr_features_equal_recomputed():
    ev = _tiny_evaluator(batch_size=4)
    cache = ev.hr_cache()
    assert len(cache) == 2 and cache[0][0] is None  # L1 caches nothing
    vgg = ev.objectives[1].loss.vgg
    for b, (s, e) in enumerate(ev.batches):
        with torch.no_grad():
            fresh = vgg(ev.eval_set.hr[s:e])["conv1_2"]
        assert torch.equal(cache[b][1]["conv1_2"], fresh)
    assert ev.hr_cache() is cache  # computed once
    # cached and uncached objective values agree
    model = _tiny_model(2)
    with torch.no_grad():
        sr = model(ev.eval_set.lr[:4])
        obj = ev.objectives[1]
        torch.testing.assert_close(obj(sr, ev.eval_set.hr[:4], cache[0][1]), obj(sr, ev.eval_set.hr[:4], None))


def test_evaluator_accepts_metric_modules_and_callables():
    es = _tiny_eval_set()
    ev = FitnessEvaluator(es, [_StandInNoRef(), _StandInFR(), lambda sr, hr, c: (sr - hr).abs().flatten(1).amax(1)],
                          batch_size=5)
    assert isinstance(ev.objectives[0], MetricFitness) and ev.names[:2] == ["standin_nr", "standin_mse"]
    model = _tiny_model(3)
    f = ev.evaluate(model)
    with torch.no_grad():
        sr = model(es.lr).clamp(0, 1)
    per_img = lambda v: v.view(2, 3).double().mean(1).mean()  # noqa: E731
    assert float(f[0]) == pytest.approx(-float(per_img(sr.flatten(1).mean(1))), rel=1e-6)  # negated
    assert float(f[1]) == pytest.approx(float(per_img((sr - es.hr).pow(2).flatten(1).mean(1))), rel=1e-6)
    with pytest.raises(ValueError, match="one value per patch"):
        FitnessEvaluator(es, [lambda sr, hr, c: (sr - hr).abs().mean()]).evaluate(model)


# ----------------------------------------------------------------------------- EA phase


@pytest.fixture(scope="module")
def evaluator():
    return _tiny_evaluator()


def _phase(evaluator, selector, generations=3, seed=0, variation=VariationConfig(p_mutation=0.5)):
    return run_ea_phase(_tiny_states(4), selector, evaluator, _tiny_model, generations,
                        torch.Generator().manual_seed(seed), variation=variation)


def test_ea_phase_moead_deterministic_and_consistent(evaluator):
    states = _tiny_states(4)
    r1 = _phase(evaluator, MOEADSelector.uniform(4, protected={0}))
    r2 = _phase(evaluator, MOEADSelector.uniform(4, protected={0}))
    assert r1.replacements == r2.replacements and len(r1.replacements) > 0
    assert torch.equal(r1.fitness, r2.fitness) and r1.evaluations == 4 + 3 * 4
    for a, b in zip(r1.population, r2.population):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(rep.slot != 0 for rep in r1.replacements)  # protected
    assert all(torch.equal(r1.population[0][k], states[0][k]) for k in states[0])
    for rep in r1.replacements:  # only neighbours of the parent are replaced
        assert rep.slot in neighbourhoods(4)[rep.parent]
    assert [g.parents for g in r1.generations] == [[0, 1, 2, 3]] * 3
    assert r1.generations[0].children_fitness.shape == (4, 2)
    # the recorded F is the fitness of what each slot now holds
    torch.testing.assert_close(evaluator.evaluate_states(_tiny_model(), r1.population), r1.fitness,
                               rtol=1e-6, atol=1e-9)
    assert torch.equal(r1.ideal, torch.minimum(r1.initial_fitness.amin(0),
                                               torch.cat([g.children_fitness for g in r1.generations]).amin(0)))
    r3 = _phase(evaluator, MOEADSelector.uniform(4, protected={0}), generations=1, seed=1)
    assert [g.mates for g in r3.generations] != [g.mates for g in r1.generations[:1]]  # the seed matters


def test_ea_phase_nsga2_generational(evaluator):
    r1 = _phase(evaluator, NSGA2Selector(protected={0}), generations=2)
    r2 = _phase(evaluator, NSGA2Selector(protected={0}), generations=2)
    assert r1.replacements == r2.replacements and torch.equal(r1.fitness, r2.fitness)
    assert all(rep.slot != 0 for rep in r1.replacements)
    torch.testing.assert_close(evaluator.evaluate_states(_tiny_model(), r1.population), r1.fitness, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- distributed evaluation


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ev = _tiny_evaluator(batch_size=2)
        states = _tiny_states(4)
        model = _tiny_model()
        res = {
            "one": ev.evaluate_state(model, states[1], distributed=True),
            "many": ev.evaluate_states(model, states, distributed=True),
        }
        rep = run_ea_phase(states, MOEADSelector.uniform(4, protected={0}), ev, _tiny_model, 2,
                           torch.Generator().manual_seed(0), variation=VariationConfig(p_mutation=0.5),
                           distributed=True)
        res["phase_fitness"], res["phase_repl"] = rep.fitness, [tuple(vars(r).values()) for r in rep.replacements]
        if rank == 0:  # the same calls in one process, same thread count
            res["ref_one"] = ev.evaluate_state(model, states[1])
            res["ref_many"] = ev.evaluate_states(model, states)
            ref = run_ea_phase(states, MOEADSelector.uniform(4, protected={0}), ev, _tiny_model, 2,
                               torch.Generator().manual_seed(0), variation=VariationConfig(p_mutation=0.5))
            res["ref_phase_fitness"] = ref.fitness
            res["ref_phase_repl"] = [tuple(vars(r).values()) for r in ref.replacements]
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_process_evaluation_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["one"], r0["ref_one"]) and torch.equal(r1["one"], r0["ref_one"])
    assert torch.equal(r0["many"], r0["ref_many"]) and torch.equal(r1["many"], r0["ref_many"])
    assert r0["phase_repl"] == r0["ref_phase_repl"] == r1["phase_repl"]
    assert torch.equal(r0["phase_fitness"], r0["ref_phase_fitness"])
    assert torch.equal(r1["phase_fitness"], r0["ref_phase_fitness"])


def test_hypervolume_by_hand():
    from perceptsr.ea_adam.selection import hypervolume

    # minimised (a, b) points against reference (4, 4): staircase of rectangles, hand-summed
    pts = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    assert hypervolume(pts, [4.0, 4.0]) == pytest.approx(3 * 1 + 2 * 1 + 1 * 1)
    assert hypervolume(list(reversed(pts)), [4.0, 4.0]) == pytest.approx(6.0)  # order does not matter
    assert hypervolume(pts + [[2.5, 2.5]], [4.0, 4.0]) == pytest.approx(6.0)  # a dominated point adds nothing
    assert hypervolume(pts + [[5.0, 0.0], [0.5, float("nan")]], [4.0, 4.0]) == pytest.approx(6.0)  # outside
    assert hypervolume([[2.0, 2.0]], [4.0, 4.0]) == pytest.approx(4.0)
    assert hypervolume([[1.0, 1.0]], [1.0, 3.0]) == 0.0  # not strictly better than the reference
    improved = [[1.0, 3.0], [1.5, 2.0], [3.0, 1.0]]  # one member better in one objective: more volume
    assert hypervolume(improved, [4.0, 4.0]) > hypervolume(pts, [4.0, 4.0])
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        hypervolume([[1.0, 2.0, 3.0]], [4.0, 4.0])
