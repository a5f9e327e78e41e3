"""RankSRGAN stage 2 validation: how well a Ranker orders the valid split.

:func:`evaluate_ranker` scores every patch in eval mode and reports the pairwise ordering accuracy
within each location (the release's ``rank_pair_test``, what the margin loss trains and the default
best-checkpoint criterion), the Spearman and Kendall correlation of scores and labels over the
whole split (*global*: dominated by how the metric varies with image content across locations) and
the same correlations *per location* (:func:`location_correlations`: within each location's
patches, then averaged over the locations).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from perceptsr.ranksrgan.datasets import RankGroups, same_window, load_patch

__all__ = ["pairwise_accuracy", "rank_correlations", "location_correlations", "evaluate_ranker"]


def pairwise_accuracy(scores, labels, groups: Iterable[Sequence[int]], pairs: Iterable[tuple] | None = None) -> float:
    """Share of within-group pairs (i, j) whose predicted order ``s_i >= s_j`` matches ``l_i >= l_j``
    (the release's ``rank_pair_test``). ``pairs`` optionally restricts to those level-index pairs."""
    s, lab = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    allowed = None if pairs is None else {tuple(p) for p in pairs}
    correct = total = 0
    for idx in groups:
        for a, b in combinations(range(len(idx)), 2):
            if allowed is not None and (a, b) not in allowed:
                continue
            i, j = idx[a], idx[b]
            total += 1
            correct += bool((s[i] >= s[j]) == (lab[i] >= lab[j]))
    return correct / total if total else math.nan


def rank_correlations(scores, labels) -> dict[str, float]:
    """Spearman (SROCC) and Kendall (tau-b) correlation of scores and labels (NaN when undefined)."""
    from scipy import stats

    s, lab = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(lab) == 0:
        return {"srocc": math.nan, "kendall": math.nan}
    return {"srocc": float(stats.spearmanr(s, lab)[0]), "kendall": float(stats.kendalltau(s, lab)[0])}


def _kendall_tau_b(s: np.ndarray, lab: np.ndarray) -> float:
    """Kendall's tau-b of a few values from their pair signs (NaN when either side is constant)."""
    i, j = np.triu_indices(len(s), 1)
    ds, dl = np.sign(s[i] - s[j]), np.sign(lab[i] - lab[j])
    denom = math.sqrt(np.count_nonzero(ds) * np.count_nonzero(dl))
    return float((ds * dl).sum() / denom) if denom else math.nan


def location_correlations(scores, labels, groups: Iterable[Sequence[int]]) -> dict[str, float]:
    """``location_srocc`` / ``location_kendall``: Spearman and Kendall (tau-b) correlation of scores
    and labels within each group (one location's patches), averaged over the groups where both are
    defined (neither side constant; NaN when no group is). With three levels per location the
    per-group values are coarse (Spearman -1, -0.5, 0.5 or 1), their mean is not."""
    from scipy.stats import rankdata

    s, lab = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    sroccs, kendalls = [], []
    for idx in groups:
        gs, gl = s[list(idx)], lab[list(idx)]
        if len(gs) < 2 or np.ptp(gs) == 0 or np.ptp(gl) == 0:
            continue
        sroccs.append(float(np.corrcoef(rankdata(gs), rankdata(gl))[0, 1]))
        kendalls.append(_kendall_tau_b(gs, gl))
    return {"location_srocc": float(np.mean(sroccs)) if sroccs else math.nan,
            "location_kendall": float(np.mean(kendalls)) if kendalls else math.nan}


@torch.no_grad()
def evaluate_ranker(model: nn.Module, data: RankGroups, device, batch_size: int = 16, crop: int = 0) -> dict[str, float]:
    """Score every patch of ``data`` with ``model`` in eval mode (BN running statistics) and return
    ``accuracy`` (all within-location pairs), ``hard_accuracy`` (the gap levels' pair only, NaN when
    unknown), the global ``srocc`` / ``kendall`` over all patches and the per-location
    ``location_srocc`` / ``location_kendall``. ``crop`` > 0 adds ``crop_accuracy``: the
    within-location accuracy on the centre ``crop`` x ``crop`` window of each patch (the input size
    the rank-content loss gives the Ranker when the generator trains on smaller patches)."""
    was_training = model.training
    model.eval()
    paths, labels, groups = [], [], []
    for group in data.groups:
        groups.append(list(range(len(paths), len(paths) + len(group))))
        paths += [p for _, p, _ in group]
        labels += [score for _, _, score in group]
    scores, crop_scores = [], []
    try:
        for i in range(0, len(paths), batch_size):
            names = paths[i : i + batch_size]
            patches = [load_patch(p) for p in names]  # each file read once, for both sizes
            scores.append(model(torch.stack(patches).to(device)).float().reshape(-1).cpu())
            if crop:
                windows = [same_window((x,), crop, None, p)[0] for x, p in zip(patches, names)]
                crop_scores.append(model(torch.stack(windows).to(device)).float().reshape(-1).cpu())
    finally:
        model.train(was_training)
    s = torch.cat(scores).numpy() if scores else np.zeros(0)
    out = {"accuracy": pairwise_accuracy(s, labels, groups)}
    hard = set(data.hard_pair)
    hard_groups = []
    for group, idx in zip(data.groups, groups):
        members = [k for k, (lv, _, _) in enumerate(group) if lv in hard]
        if len(members) == 2:
            hard_groups.append([idx[k] for k in members])
    out["hard_accuracy"] = pairwise_accuracy(s, labels, hard_groups) if hard_groups else math.nan
    if crop:
        out["crop_accuracy"] = pairwise_accuracy(torch.cat(crop_scores).numpy() if crop_scores else np.zeros(0),
                                                 labels, groups)
    return {**out, **rank_correlations(s, labels), **location_correlations(s, labels, groups)}
