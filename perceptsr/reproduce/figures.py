"""``DIR/report.html`` of a reproduction: tables of the summary, the perception-distortion plane with
per-seed points and means, and the validation curves of the named runs.

The curves are read from the runs' TensorBoard logs with :func:`perceptsr.report.read_scalars` and
labelled with the run's name (``SRGAN``, ``RankSRGAN``, ...): thin lines per seed, a thick line for
the mean over the seeds that logged the same steps. The page embeds its PNGs (also written beside
it) and needs no network. ``perceptsr report`` gives the generic report of any single seed.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Sequence

from perceptsr.checkpoint import atomic_write

__all__ = ["COLORS", "pd_figure", "curve_figure", "write_page", "table_html", "table_markdown"]

COLORS = {"bicubic": "tab:gray", "PSNR": "black", "SRGAN": "tab:blue", "RankSRGAN": "tab:red",
          "EA-Adam": "tab:red", "weighted-sum Adam": "tab:blue", "EA-Adam fused": "tab:green",
          "trade-off sweep": "tab:olive"}


def _figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(width * ncols, height * nrows))
    axes = [[fig.add_subplot(nrows, ncols, r * ncols + c + 1) for c in range(ncols)] for r in range(nrows)]
    return fig, [a for row in axes for a in row]


def _png(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return data


def pd_figure(points: dict[str, dict[str, list[tuple[float, float]]]], metric: str, path: Path,
              lines: dict[str, dict[str, list[tuple[float, float]]]] | None = None) -> bytes | None:
    """PSNR (x) against ``metric`` (y) per dataset. ``points[dataset][label]`` = per-seed (psnr, metric)
    points: small markers each, a large one with std error bars at their mean. ``lines`` (same
    shape) are drawn as connected curves (a population, a trade-off sweep), one per seed."""
    datasets = [d for d in points if any(points[d].values())]
    if not datasets:
        return None
    cols = min(2, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    fig, axes = _figure(rows, cols, 5.2, 4.2)
    for ax, ds in zip(axes, datasets):
        for label, pts in (lines or {}).get(ds, {}).items():
            for k, curve in enumerate(pts):
                if curve:
                    ax.plot([p[0] for p in curve], [p[1] for p in curve], "-", color=COLORS.get(label, "tab:purple"),
                            alpha=0.45, lw=1, marker=".", label=label if k == 0 else None)
        for label, pts in points[ds].items():
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            if not pts:
                continue
            color = COLORS.get(label, "tab:purple")
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if len(pts) > 1:
                ax.scatter(xs, ys, s=14, color=color, alpha=0.5)
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            sx = math.sqrt(sum((x - mx) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
            sy = math.sqrt(sum((y - my) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else 0.0
            ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="o", ms=8, color=color, capsize=3,
                        label=f"{label} (mean of {len(pts)})" if len(pts) > 1 else label)
        ax.set_title(ds)
        ax.set_xlabel("PSNR on Y (dB) ↑")
        ax.set_ylabel(f"{metric.upper()} ↓")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(datasets):]:
        ax.axis("off")
    fig.suptitle(f"Perception-distortion plane: PSNR vs {metric.upper()}")
    return _png(fig, path)


def curve_figure(runs: dict[str, Sequence[Path]], tags: Sequence[tuple[str, str]], path: Path) -> bytes | None:
    """Validation curves: ``runs[label]`` = TensorBoard folders (one per seed); ``tags`` = (tag prefix,
    axis title), e.g. ``("val/niqe", "NIQE")`` (a prefix also matches ``val/niqe-fitted``)."""
    from perceptsr.report import read_scalars

    series = {label: [read_scalars(d) for d in dirs if Path(d).is_dir()] for label, dirs in runs.items()}
    if not any(series.values()):
        return None
    fig, axes = _figure(1, len(tags), 5.2, 3.6)
    drawn = False
    for ax, (prefix, title) in zip(axes, tags):
        for label, per_seed in series.items():
            color = COLORS.get(label, "tab:purple")
            curves = []
            for scalars in per_seed:
                tag = next((t for t in sorted(scalars) if t == prefix or t.startswith(prefix + "-")), None)
                if tag is not None:
                    curves.append(scalars[tag])
            for steps, values in curves:
                ax.plot(steps, values, color=color, alpha=0.35, lw=1)
                drawn = True
            same = [c for c in curves if c[0] == curves[0][0]] if curves else []
            if same:
                mean = [sum(c[1][i] for c in same) / len(same) for i in range(len(same[0][0]))]
                ax.plot(same[0][0], mean, color=color, lw=2.2, marker="o", ms=3,
                        label=f"{label} (mean of {len(same)})" if len(same) > 1 else label)
        ax.set_title(f"validation {title}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig, path) if drawn else None


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def table_html(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(out) + "</table>"


def table_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as :func:`table_html`, as Markdown (what the terminal and docs show)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def mean_pm(mean, std, digits: int = 4) -> str:
    if mean is None:
        return "n/a"
    return _fmt(mean, digits) + ("" if std is None else f" ± {std:.{digits}f}")


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%;display:block;margin:.6em 0}"
        ".muted{color:#666;font-size:.9em}")


def write_page(path: Path, title: str, sections: Sequence[tuple[str, str | bytes]]) -> Path:
    """An HTML page of ``(heading, html or PNG bytes)`` sections, written atomically."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, bytes):
            body.append(f'<img alt="{html.escape(heading)}" src="data:image/png;base64,'
                        f'{base64.b64encode(content).decode("ascii")}">')
        else:
            body.append(content)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return atomic_write(path, lambda f: f.write(page.encode("utf-8")))
