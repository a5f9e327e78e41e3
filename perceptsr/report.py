"""A self-contained HTML report of evaluation results and training runs.

>>> from perceptsr.report import build_report
>>> build_report(["results/", "runs/ranksrgan"], "report.html")      # doctest: +SKIP

Sources are ``results.json`` files (from :func:`perceptsr.evaluation.write_results`), folders holding
them (searched recursively), and run folders with TensorBoard event files (also searched
recursively; a run folder beside or above an evaluated checkpoint is found too). The page has:

* the metric table of each results file (best bold, ↑/↓, ``n/N images`` when images were skipped);
* the perception-distortion plane: PSNR against LPIPS and against NIQE, one point per evaluated
  model (or population member), one panel per dataset, the Pareto front dashed;
  sweeps that results files list under ``curves`` (``perceptsr interpolate --eval``: the
  interpolation from A to B, and EA-Adam's trade-off curve beside it) are drawn as lines;
* training curves of every scalar tag, one line per run, grouped by tag prefix (``train/``, ``val/``);
* zoomed crops (LR bicubic / each model / HR) where the SR outputs differ most, from the SR images
  that ``evaluate(save_images=...)`` / ``perceptsr eval --save-images`` wrote (or the SR folders scored).

Everything is embedded (base64 PNG, inline CSS): the page needs no network and no other file. Each
plot is also saved as a PNG next to the HTML (``<name>_pd_lpips.png``, ``<name>_curves_train.png``, ...).
matplotlib (Agg) and TensorBoard are imported only here, when a report is built.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from perceptsr.errors import ConfigError, ImageReadError

__all__ = ["build_report", "curve_lines", "find_sources", "pareto_front", "read_scalars"]

#: Perception metrics drawn against PSNR on the perception-distortion plane.
PD_METRICS = ("lpips", "dists", "niqe", "pi")  # lower-better perceptual metrics (and variants: lpips-vgg, ...)
#: Side of the crop window in HR pixels (smaller images use half their shorter side).
CROP_SIZE = 96
_URL = re.compile(r"https?://\S+")
#: Line colours of the sweep curves (``results["curves"]``) on the perception-distortion plane.
_CURVE_COLORS = ("tab:green", "tab:purple", "tab:orange", "tab:brown")


@dataclass
class Sources:
    """What a report is built from: results files and TensorBoard run folders (name -> folder)."""

    results: list[tuple[Path, dict]] = field(default_factory=list)
    runs: dict[str, Path] = field(default_factory=dict)


def _add_run(runs: dict[str, Path], folder: Path) -> None:
    folder = folder.resolve()
    if folder in runs.values():
        return
    base = folder.parent.name if folder.name == "tb" else folder.name
    name, k = base, 2
    while name in runs:
        name, k = f"{base}_{k}", k + 1
    runs[name] = folder


def _event_dirs(folder: Path) -> list[Path]:
    return sorted({p.parent for p in folder.rglob("events.out.tfevents.*") if p.is_file()})


def find_sources(paths: Sequence[str | os.PathLike]) -> Sources:
    """Results files and TensorBoard run folders found in ``paths`` (files or folders)."""
    from perceptsr.evaluation import load_results

    found = Sources()
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.results.append((path, load_results(path)))
        elif path.is_dir():
            for res in sorted(path.rglob("results.json")):
                found.results.append((res, load_results(res)))
            for d in _event_dirs(path):
                _add_run(found.runs, d)
        else:
            raise ImageReadError(f"{path}: no such file or folder")
    for _, res in found.results:  # runs that produced the evaluated checkpoints
        for m in res.get("models", []):
            if m.get("kind") != "model" or not Path(m["source"]).is_file():
                continue
            for parent in list(Path(m["source"]).resolve().parents)[:4]:
                if (parent / "tb").is_dir() and _event_dirs(parent / "tb"):
                    _add_run(found.runs, parent / "tb")
                    break
    if not found.results and not found.runs:
        listed = ", ".join(str(p) for p in paths)
        raise ConfigError(f"{listed}: no results.json and no TensorBoard event files found")
    return found


# ----------------------------------------------------------------------------------------- plots


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig, path: Path) -> bytes:
    """PNG bytes of ``fig``, also written to ``path``; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when x (PSNR) is maximised and y (perception) minimised,
    sorted by decreasing x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def curve_lines(results: dict, dataset: str, metric: str) -> list[tuple[str, list[float], list[float]]]:
    """The ``(name, PSNRs, metric values)`` of each curve in ``results["curves"]`` (entries in sweep
    order, e.g. an interpolation from A to B) on ``dataset``; entries without both values are left out."""
    means = {s["model"]: s["mean"] for s in results["summary"] if s["dataset"] == dataset}
    lines = []
    for curve in results.get("curves", []):
        pts = [means[p["model"]] for p in curve["points"] if p["model"] in means]
        pts = [(m["psnr"], m[metric]) for m in pts if m.get("psnr") is not None and m.get(metric) is not None]
        if len(pts) > 1:
            lines.append((curve["name"], [x for x, _ in pts], [y for _, y in pts]))
    return lines


def _pd_plot(results: dict, metric: str, path: Path) -> bytes | None:
    rows = [s for s in results["summary"] if s["mean"].get("psnr") is not None and s["mean"].get(metric) is not None]
    datasets = list(dict.fromkeys(s["dataset"] for s in rows))
    if not datasets:
        return None
    cols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / cols)
    fig, axes = _figure(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        pts = [(s["mean"]["psnr"], s["mean"][metric], s["model"]) for s in rows if s["dataset"] == ds]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color="tab:blue", zorder=3)
        for k, (name, xs, ys) in enumerate(curve_lines(results, ds, metric)):
            ax.plot(xs, ys, "-", color=_CURVE_COLORS[k % len(_CURVE_COLORS)], lw=1.5, label=name, zorder=1)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front([(p[0], p[1]) for p in pts])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--o", color="tab:red", mfc="none",
                ms=9, label="Pareto front", zorder=2)
        ax.legend(fontsize=8)
        ax.set_title(ds)
        ax.set_xlabel("PSNR (dB) ↑")
        ax.set_ylabel(f"{metric.upper()} ↓")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.suptitle(f"Perception-distortion plane: PSNR vs {metric.upper()} (protocol {results['protocol']})")
    return _save(fig, path)


def read_scalars(run_dir: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """All scalar series of a TensorBoard log folder: tag -> (steps, values), by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        events = sorted(acc.Scalars(tag), key=lambda e: e.step)
        out[tag] = ([int(e.step) for e in events], [float(e.value) for e in events])
    return out


def _curve_plots(runs: dict[str, Path], stem: Path) -> list[tuple[str, bytes]]:
    series = {name: read_scalars(d) for name, d in runs.items()}
    groups: dict[str, list[str]] = {}
    for tag in sorted({t for s in series.values() for t in s}):
        groups.setdefault(tag.split("/")[0] if "/" in tag else "scalars", []).append(tag)
    plots = []
    for group, tags in groups.items():
        cols = min(3, len(tags))
        nrows = math.ceil(len(tags) / cols)
        fig, axes = _figure(nrows, cols, figsize=(4.6 * cols, 3.2 * nrows), squeeze=False)
        for ax, tag in zip(axes.flat, tags):
            for name, s in series.items():
                if tag in s:
                    steps, values = s[tag]
                    ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
            ax.set_title(tag, fontsize=9)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(tags):]:
            ax.axis("off")
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", group)
        plots.append((group, _save(fig, stem.with_name(f"{stem.name}_curves_{safe}.png"))))
    return plots


# ----------------------------------------------------------------------------------------- crops


def _gray(img: np.ndarray) -> np.ndarray:
    return img.mean(axis=2) if img.ndim == 3 else img


def _window_scores(stack: np.ndarray, size: int) -> np.ndarray:
    """Mean over each ``size x size`` window (integral image) of the per-pixel spread across images."""
    spread = stack.std(axis=0)
    integral = np.pad(spread.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]) / size**2


def _crop_candidates(results: dict) -> list[dict]:
    """Per dataset and image: HR, LR source and the SR file of every entry that has one."""
    by_image: dict[tuple[str, str], dict] = {}
    for r in results["images"]:
        if not r.get("sr"):
            continue
        item = by_image.setdefault((r["dataset"], r["image"]), {"dataset": r["dataset"], "image": r["image"],
                                                               "hr": r["hr"], "lr": r["lr"], "sr": {}})
        item["sr"][r["model"]] = r["sr"]
    return list(by_image.values())


def _load_crop_images(item: dict, scale: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray] | None:
    from perceptsr.data.color import modcrop
    from perceptsr.data.imresize import imresize
    from perceptsr.data.io import read_image

    try:
        hr = modcrop(read_image(item["hr"]), scale)
        srs = {name: read_image(p) for name, p in item["sr"].items()}
        if "bicubic" in srs:
            bic = srs.pop("bicubic")
        else:
            lr = read_image(item["lr"]) if item["lr"] and item["lr"] != "bicubic" else imresize(hr, 1 / scale)
            bic = np.clip(imresize(lr, scale), 0, 1)
    except ImageReadError:
        return None
    if any(img.shape != hr.shape for img in (bic, *srs.values())) or not srs:
        return None
    return bic, srs, hr


def _crop_plots(results: dict, stem: Path, max_crops: int) -> list[tuple[str, bytes]]:
    scale = int(results.get("scale") or 4)
    scored = []
    for item in _crop_candidates(results):
        loaded = _load_crop_images(item, scale)
        if loaded is None:
            continue
        bic, srs, hr = loaded
        size = min(CROP_SIZE, min(hr.shape[:2]) // 2)
        scores = _window_scores(np.stack([_gray(bic), *(_gray(s) for s in srs.values())]), size)
        y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
        scored.append((float(scores[y, x]), item, (int(y), int(x), size), loaded))
    # the most disputed images, taking datasets in turn
    scored.sort(key=lambda t: -t[0])
    chosen, per_dataset = [], {}
    for entry in scored:
        ds = entry[1]["dataset"]
        per_dataset.setdefault(ds, []).append(entry)
    while len(chosen) < max_crops and any(per_dataset.values()):
        for ds in list(per_dataset):
            if per_dataset[ds] and len(chosen) < max_crops:
                chosen.append(per_dataset[ds].pop(0))
    plots = []
    for _, item, (y, x, size), (bic, srs, hr) in chosen:
        panels = [("LR bicubic", bic), *srs.items(), ("HR", hr)]
        fig, axes = _figure(1, len(panels) + 1, figsize=(2.4 * (len(panels) + 1), 2.9), squeeze=False)
        import matplotlib.patches as patches

        axes[0, 0].imshow(hr, interpolation="lanczos")
        axes[0, 0].add_patch(patches.Rectangle((x, y), size, size, fill=False, edgecolor="red", linewidth=1.5))
        axes[0, 0].set_title(f"{item['dataset']}/{item['image']}", fontsize=8)
        for ax, (name, img) in zip(axes[0, 1:], panels):
            ax.imshow(img[y : y + size, x : x + size], interpolation="nearest")
            ax.set_title(name, fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{item['dataset']}_{item['image']}")
        caption = f"{item['dataset']} / {item['image']}: {size}x{size} HR-pixel window at ({x}, {y})"
        plots.append((caption, _save(fig, stem.with_name(f"{stem.name}_crops_{safe}.png"))))
    return plots


# ----------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td.name{text-align:left}small.note{color:#a33}
img{max-width:100%;display:block;margin:.6em 0}
.muted{color:#666;font-size:.9em}ul.notes{font-size:.88em;color:#444}
"""


def _esc(text) -> str:
    return html.escape(_URL.sub("(address omitted)", str(text)))


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table_html(results: dict) -> str:
    from perceptsr.evaluation import table_cells

    headers, rows = table_cells(results)
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr>"]
    for cells in rows:
        tds = []
        for i, c in enumerate(cells):
            text = f"<b>{_esc(c['text'])}</b>" if c["best"] else _esc(c["text"])
            if c["note"]:
                text += f' <small class="note">({_esc(c["note"])})</small>'
            tds.append(f'<td class="name">{text}</td>' if i < 2 else f"<td>{text}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table>")
    notes = [f"<li><code>{_esc(n)}</code> left out: {_esc(r)}</li>" for n, r in results.get("missing_metrics", {}).items()]
    notes += [f"<li>skipped {_esc(s['dataset'])} / {_esc(s['model'])} / {_esc(s['image'])}: {_esc(s['reason'])}</li>"
              for s in results.get("skipped", [])]
    notes += [f"<li>{_esc(r['dataset'])} / {_esc(r['model'])} / {_esc(r['image'])}: {_esc(n)} failed: {_esc(e)}</li>"
              for r in results.get("images", []) for n, e in (r.get("errors") or {}).items()]
    if notes:
        out.append('<ul class="notes">' + "".join(notes) + "</ul>")
    return "\n".join(out)


def build_report(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    max_crops: int = 6,
) -> Path:
    """Write the HTML report for ``sources`` (see the module docstring) and return its path.

    ``out`` defaults to ``report.html`` in the first source folder (or beside the results file).
    PNGs of the plots are written beside it, named after it. ``max_crops`` bounds the crop figures.
    """
    paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not paths:
        raise ConfigError("build_report: no source given")
    found = find_sources(paths)
    if out is None:
        first = Path(paths[0])
        out = (first if first.is_dir() else first.parent) / "report.html"
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"report output must end in .html, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")

    body = [f"<h1>perceptsr report</h1><p class=\"muted\">Built {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}"
            f" from {', '.join(_esc(p) for p in paths)}.</p>"]
    many = len(found.results) > 1
    for k, (path, res) in enumerate(found.results):
        tag = f"_{k + 1}" if many else ""
        body.append(f"<h2>Metrics{_esc(f' ({path.parent.name})' if many else '')}</h2>")
        body.append(f'<p class="muted">Protocol <code>{_esc(res["protocol"])}</code>, x{_esc(res.get("scale"))}; '
                    "mean per dataset and model; ↑ higher is better, ↓ lower is better; best in bold.</p>")
        body.append(_table_html(res))
        protocols = "".join(f"<li><code>{_esc(n)}</code>: {_esc(i.get('protocol', ''))}</li>"
                            for n, i in res.get("metric_info", {}).items())
        if protocols:
            body.append(f'<details><summary>Metric protocols</summary><ul class="notes">{protocols}</ul></details>')
        body.append("<h2>Perception-distortion plane</h2>")
        drawn = False
        for metric in res["metrics"]:
            if "psnr" in res["metrics"] and metric.split("-")[0] in PD_METRICS:
                data = _pd_plot(res, metric, stem.with_name(f"{stem.name}_pd_{metric}{tag}.png"))
                if data is not None:
                    body.append(_img(data, f"PSNR vs {metric}"))
                    drawn = True
        if not drawn:
            body.append('<p class="muted">Needs PSNR together with LPIPS or NIQE in the results.</p>')
        crops = _crop_plots(res, stem.with_name(f"{stem.name}{tag}"), max_crops)
        body.append("<h2>Zoomed crops</h2>")
        if crops:
            body.append('<p class="muted">Windows where the SR outputs differ most (largest spread across '
                        "LR bicubic and the models), enlarged without interpolation.</p>")
            body += [f"<figure>{_img(d, c)}<figcaption class=\"muted\">{_esc(c)}</figcaption></figure>" for c, d in crops]
        else:
            body.append('<p class="muted">No SR images recorded: run <code>perceptsr eval --save-images</code> '
                        "(or score SR folders) to get crops.</p>")
    body.append("<h2>Training curves</h2>")
    if found.runs:
        body.append('<p class="muted">Runs: ' + ", ".join(f"{_esc(n)} (<code>{_esc(d)}</code>)"
                                                          for n, d in found.runs.items()) + "</p>")
        curves = _curve_plots(found.runs, stem)
        body += [f"<h3>{_esc(g)}</h3>{_img(d, g)}" for g, d in curves]
        if not curves:
            body.append('<p class="muted">The event files hold no scalars.</p>')
    else:
        body.append('<p class="muted">No TensorBoard logs found among the sources.</p>')

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>perceptsr report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
