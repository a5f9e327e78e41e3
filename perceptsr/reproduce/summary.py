"""``DIR/summary.json``: per-seed numbers of a reproduction and their mean and std over seeds.

The per-seed entries share one nested shape; :func:`aggregate` walks it and gives, leaf by leaf,
the mean and the sample standard deviation (n - 1; null with one seed) over the seeds that have a
finite value there. The file is rewritten atomically each time a seed finishes.
"""

from __future__ import annotations

from pathlib import Path

from perceptsr.reproduce.runner import Runner, mean_std, write_json

__all__ = ["SUMMARY", "aggregate", "metric_table", "write_summary"]

SUMMARY = "summary.json"
#: summary key of each evaluated metric (a fitted NIQE model is still reported as ``niqe``)
METRIC_KEYS = {"psnr": "psnr", "ssim": "ssim", "lpips": "lpips", "niqe": "niqe", "niqe-fitted": "niqe"}
REPORTED = ("psnr", "ssim", "niqe", "lpips")


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*prefix, k))
    else:
        yield prefix, tree


def _put(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    """(mean, std) trees over ``per_seed`` trees, leaf by leaf (numbers only; other leaves dropped)."""
    values: dict[tuple, list] = {}
    for tree in per_seed:
        for path, v in _leaves(tree):
            if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
                values.setdefault(path, []).append(v)
    mean, std = {}, {}
    for path, vs in values.items():
        stats = mean_std(vs)
        _put(mean, path, stats["mean"])
        _put(std, path, stats["std"])
    return mean, std


def metric_table(results_json: str | Path) -> dict[str, dict[str, dict]]:
    """``{dataset: {model: {psnr, ssim, niqe, lpips}}}`` from a ``results.json`` (null when absent)."""
    from perceptsr.evaluation import load_results

    res = load_results(results_json)
    table: dict[str, dict[str, dict]] = {}
    for row in res["summary"]:
        values = {k: None for k in REPORTED}
        for name, v in row["mean"].items():
            if name in METRIC_KEYS:
                values[METRIC_KEYS[name]] = v
        table.setdefault(row["dataset"], {})[row["model"]] = values
    return table


def write_summary(runner: Runner, manifest: dict, body: dict) -> Path:
    """``DIR/summary.json``: the manifest's identity, the commands, and ``body`` (per seed + mean/std)."""
    from perceptsr import __version__

    stage_commands = {key: r["command"] for key, r in sorted(runner.all_done().items()) if "command" in r}
    summary = {
        "experiment": manifest["experiment"],
        "profile": manifest["profile"],
        "profile_settings": manifest["settings"],
        "seeds": manifest["seeds"],
        "perceptsr_version": __version__,
        "commands": {"reproduce": [i["command"] for i in manifest.get("invocations", [])],
                     "stages": stage_commands},
        **body,
    }
    return write_json(runner.out / SUMMARY, summary)
