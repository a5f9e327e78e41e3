"""How consistent a rank dataset's labels are with the order its levels were meant to have.

RankSRGAN's Ranker learns the order of the labels within each location; when the levels (e.g. HR /
GAN / PSNR / bicubic) do not differ clearly in the metric, that order changes from one location to
the next and there is little to learn (issue 10: at CPU scale the PSNR level had the lowest NIQE in
191 of 324 triplets). :func:`level_consistency` measures it; ``perceptsr rank-data`` writes it to
``summary.json`` and prints :func:`format_consistency`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["level_consistency", "format_consistency"]


def level_consistency(labels, names) -> dict:
    """Consistency of ``labels`` ``(triplets, levels)`` (higher = worse) with the order ``names``
    (best first).

    ``ordered``: fraction of triplets whose labels rise strictly along the whole order; ``pairs``:
    for each level pair ``"a<b"`` (a meant better), the fraction of triplets with label(a) < label(b);
    ``best`` / ``worst``: per level, in how many triplets it has the lowest / highest label (ties go
    to the earlier level); ``mean_label`` per level. Fractions and means are ``None`` with no triplets."""
    names = list(names)
    labels = np.asarray(labels, np.float64).reshape(-1, len(names))
    n = len(labels)

    def frac(mask) -> float | None:
        return float(np.mean(mask)) if n else None

    best = np.bincount(labels.argmin(axis=1), minlength=len(names)) if n else np.zeros(len(names), int)
    worst = np.bincount(labels.argmax(axis=1), minlength=len(names)) if n else np.zeros(len(names), int)
    return {
        "order": names,
        "triplets": n,
        "ordered": frac(np.all(np.diff(labels, axis=1) > 0, axis=1)),
        "pairs": {f"{names[i]}<{names[j]}": frac(labels[:, i] < labels[:, j])
                  for i in range(len(names)) for j in range(i + 1, len(names))},
        "best": {name: int(c) for name, c in zip(names, best)},
        "worst": {name: int(c) for name, c in zip(names, worst)},
        "mean_label": {name: float(labels[:, i].mean()) if n else None for i, name in enumerate(names)},
    }


def format_consistency(consistency: dict) -> str:
    """One console line: the fraction of triplets in the intended order and each level's best / worst
    counts."""
    c = consistency
    ordered = "no" if c["ordered"] is None else f"{c['ordered']:.1%} of"
    per_level = ", ".join(f"{lv} {c['best'][lv]}/{c['worst'][lv]}" for lv in c["order"])
    return (f"label order {' < '.join(c['order'])}: {ordered} {c['triplets']} triplets in that order; "
            f"best/worst per level: {per_level}")
