"""Model cards: evaluation scores stamped into a model's safetensors file, and what ``perceptsr info``
prints about a model.

The card is JSON under the one header metadata key :data:`CARD_KEY` (safetensors metadata maps
strings to strings): ``{"card_version": 1, "evaluations": [...]}``, newest last. Each evaluation
records the protocol, scale, datasets (name, image count), the mean of every metric per dataset
with the number of images it covers, each metric's protocol, the date and the perceptsr version.
Stamping rewrites the file atomically (:func:`perceptsr.checkpoint.atomic.atomic_write`, checked
before it replaces the original) with the same tensors under the same names and the other
metadata untouched, so plain ``safetensors.torch.load_file`` still reads it and the key names
stay BasicSR's. Native and foreign safetensors files can be stamped; torch files cannot (convert
them with ``perceptsr convert`` first).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from perceptsr.checkpoint.atomic import atomic_write
from perceptsr.checkpoint.legacy import first_line
from perceptsr.errors import CheckpointError
from perceptsr.evaluation import DISPLAY_FORMAT

__all__ = ["CARD_KEY", "format_info", "model_info", "read_card", "stamp_evaluation"]

CARD_KEY = "perceptsr_card"
CARD_VERSION = 1


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError for non-safetensors bytes
        raise CheckpointError(f"{path}: not a safetensors file ({first_line(exc)}); model cards live in "
                              "safetensors metadata: convert it first with perceptsr convert") from None


def _card_of(path: Path, header: dict[str, str]) -> dict[str, Any]:
    if CARD_KEY not in header:
        return {"card_version": CARD_VERSION, "evaluations": []}
    try:
        card = json.loads(header[CARD_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt model card (metadata {CARD_KEY!r}): {exc}") from None
    if not isinstance(card, dict) or not isinstance(card.get("evaluations"), list):
        raise CheckpointError(f"{path}: metadata {CARD_KEY!r} is not a perceptsr model card")
    return card


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card of a safetensors file (an empty one when nothing was stamped); CheckpointError
    for other files and unreadable cards, so callers can check a file before evaluating it."""
    path = Path(path)
    return _card_of(path, _header(path))


def _evaluation(results: dict, entry: str) -> dict[str, Any]:
    rows = [s for s in results["summary"] if s["model"] == entry]
    if not rows:
        raise CheckpointError(f"the results hold no entry {entry!r} to stamp")
    return {
        "entry": entry,
        "protocol": results["protocol"],
        "scale": results.get("scale"),
        "datasets": [{"name": s["dataset"], "images": s["total"]} for s in rows],
        "metrics": {s["dataset"]: {n: v for n, v in s["mean"].items()} for s in rows},
        "counts": {s["dataset"]: dict(s["count"]) for s in rows},
        "metric_protocols": {n: i.get("protocol") for n, i in results.get("metric_info", {}).items()},
        "date": results.get("created"),
        "perceptsr_version": results.get("perceptsr_version"),
    }


def stamp_evaluation(path: str | os.PathLike, results: dict, entry: str) -> dict[str, Any]:
    """Append the evaluation of ``entry`` in ``results`` (from :func:`perceptsr.evaluation.evaluate`)
    to the card of the safetensors file ``path``, atomically; returns the stamped evaluation."""
    from safetensors import safe_open
    from safetensors.torch import save as st_save

    path = Path(path)
    evaluation = _evaluation(results, entry)
    header = _header(path)
    card = _card_of(path, header)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        names = list(f.keys())
        tensors = {k: f.get_tensor(k) for k in names}
    card["evaluations"].append(evaluation)
    header[CARD_KEY] = json.dumps(card, sort_keys=True)
    blob = st_save(tensors, metadata=header)

    def check(tmp: Path) -> None:
        with safe_open(str(tmp), framework="pt", device="cpu") as f:
            if sorted(f.keys()) != sorted(names) or f.metadata().get(CARD_KEY) != header[CARD_KEY]:
                raise CheckpointError(f"{path}: the stamped copy does not read back; the file was left as it was")

    atomic_write(path, lambda f: f.write(blob), check=check)
    return evaluation


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """What ``perceptsr info`` shows: architecture and arguments, scale, parameter count, training
    iteration, provenance (how the file was read and what made it) and the stamped evaluations."""
    from perceptsr.checkpoint import load_model

    model = load_model(path)
    meta = model.perceptsr_meta
    path = Path(path)
    card = read_card(path) if meta["file_format"] != "torch" else {"evaluations": []}
    return {
        "path": str(path),
        "arch": meta["arch"],
        "arch_kwargs": meta["arch_kwargs"],
        "scale": meta.get("scale"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "iteration": meta.get("iteration"),
        "provenance": {
            "file_format": meta["file_format"], "layout": meta["layout"], "weights": meta["weights_key"] or "state dict",
            "ema": meta["ema"], "created": meta.get("created"), "perceptsr_version": meta.get("perceptsr_version"),
            "extra": meta.get("extra") or {},
        },
        "training_metrics": meta.get("metrics") or {},
        "evaluations": card["evaluations"],
    }


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_info(info: dict[str, Any]) -> str:
    """:func:`model_info` as the lines ``perceptsr info`` prints."""
    prov = info["provenance"]
    kwargs = ", ".join(f"{k}={v}" for k, v in info["arch_kwargs"].items())
    made = (f"perceptsr {prov['perceptsr_version']}, created {prov['created']}" if prov["perceptsr_version"]
            else "not written by perceptsr")
    lines = [
        f"model:        {info['path']}",
        f"architecture: {info['arch']}({kwargs})",
        f"scale:        x{info['scale']}" if info["scale"] is not None else "scale:        unknown",
        f"parameters:   {info['parameters']:,}",
        f"iteration:    {info['iteration'] if info['iteration'] is not None else 'not recorded'}",
        f"provenance:   {prov['file_format']} file ({made}); layout {prov['layout']}; weights {prov['weights']}"
        f"{' (EMA)' if prov['ema'] else ''}",
    ]
    lines += [f"  {key}: {_short(value)}" for key, value in prov["extra"].items()]
    if info["training_metrics"]:
        lines.append(f"training metrics: {_short(info['training_metrics'])}")
    if not info["evaluations"]:
        lines.append("scores:       none stamped (perceptsr eval --stamp)")
    for ev in info["evaluations"]:
        lines.append(f"scores ({ev.get('date')}, perceptsr {ev.get('perceptsr_version')}, protocol {ev['protocol']}, "
                     f"x{ev.get('scale')}):")
        for ds in ev["datasets"]:
            means, counts = ev["metrics"].get(ds["name"], {}), ev["counts"].get(ds["name"], {})
            cells = []
            for name, value in means.items():
                cell = f"{name} {'n/a' if value is None else format(value, DISPLAY_FORMAT.get(name, '.4g'))}"
                if counts.get(name, 0) < ds["images"]:
                    cell += f" ({counts.get(name, 0)}/{ds['images']} images)"
                cells.append(cell)
            lines.append(f"  {ds['name']} ({ds['images']} images): {', '.join(cells)}")
    return "\n".join(lines)
