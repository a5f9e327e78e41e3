"""``perceptsr demo``: both papers' controlled comparisons at the ``demo`` scale, offline.

It is ``perceptsr reproduce`` with ``--profile demo --seeds 1`` for each method, in one folder:

* ``OUT/ranksrgan/``: PSNR pre-training -> SRGAN control -> rank dataset -> Ranker -> RankSRGAN from
  the same PSNR model -> evaluation (:mod:`perceptsr.reproduce.ranksrgan`);
* ``OUT/ea_adam/``: PSNR pre-training -> EA-Adam and weighted-sum Adam populations from the same
  initialisation -> fusion and collapse -> ``--tradeoff`` sweep -> evaluation
  (:mod:`perceptsr.reproduce.ea_adam`);
* ``OUT/report.html``: both tables and perception-distortion planes; the full reports, summaries
  and TensorBoard logs are in the two folders.

Training uses scikit-image's bundled photos (no download); evaluation the first 10 images of BSD100
and Set14 when the benchmark folders are found, else two held-out photos. Each part is resumable:
run the same command again to continue. One seed and minutes of training: an illustration of the
controlled comparisons, not the papers' results.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["PARTS", "HONEST_NOTE", "run_demo", "demo_tables"]

#: experiment -> (folder under OUT, heading)
PARTS = {"ranksrgan": ("ranksrgan", "RankSRGAN against its SRGAN control (same PSNR init, data order, iterations)"),
         "ea-adam": ("ea_adam", "EA-Adam against weighted-sum Adam (same preferences, init, Adam steps)")}
HONEST_NOTE = ("Note: one seed, minutes of training on a dozen photos: this shows the controlled comparisons end "
               "to end; it is not the papers' results (see docs/reproduce.md for the cpu-scale measurements).")


def demo_tables(summaries: dict[str, dict]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """(heading, (headers, rows)) of every table the demo shows, from the two ``summary.json`` bodies."""
    from perceptsr.reproduce import EXPERIMENTS

    out = []
    for experiment, summary in summaries.items():
        module = importlib.import_module(EXPERIMENTS[experiment])
        heading = PARTS[experiment][1]
        out.append((heading, module.results_table(summary)))
        if experiment == "ranksrgan":
            out.append(("Ranker on held-out rank patches", module.ranker_table(summary)))
        else:
            out.append(("Hypervolume in the PSNR-LPIPS plane (reference: bicubic PSNR - 1 dB, bicubic LPIPS)",
                        module.hypervolume_table(summary)))
    return out


def _report(out: Path, summaries: dict[str, dict]) -> Path:
    from perceptsr.reproduce.figures import table_html, write_page

    sections: list[tuple[str, str | bytes]] = [(h, table_html(*t)) for h, t in demo_tables(summaries)]
    for experiment in summaries:
        folder = out / PARTS[experiment][0]
        for png in sorted(folder.glob("report_*.png")):
            sections.append((f"{experiment}: {png.stem.removeprefix('report_').replace('_', ' ')}", png.read_bytes()))
    sections.append(("About", f"<p>{HONEST_NOTE} Full reports: {', '.join(f'{v[0]}/report.html' for v in PARTS.values())}.</p>"))
    return write_page(out / "report.html", "perceptsr demo", sections)


def run_demo(out: str | Path = "demo_out", *, profile: str = "demo", progress: bool = True) -> dict[str, dict]:
    """Run (or continue) both parts; prints their tables, writes ``OUT/report.html``, returns the
    two summaries by experiment."""
    from perceptsr.reproduce import run_reproduce
    from perceptsr.reproduce.figures import table_markdown

    out = Path(out)
    summaries = {}
    for experiment, (folder, heading) in PARTS.items():
        print(f"[demo] {heading}", flush=True)
        summaries[experiment] = run_reproduce(experiment, profile, 1, out / folder, progress=progress,
                                              command=f"perceptsr demo --out {out} --profile {profile}")
    for heading, table in demo_tables(summaries):
        print(f"\n{heading}\n\n{table_markdown(*table)}")
    html = _report(out, summaries)
    print(f"\n[demo] report: {html.resolve()}\n[demo] {HONEST_NOTE}", flush=True)
    return summaries
