"""``perceptsr demo``: both reproductions in one folder, their tables printed and one report."""

import json

import pytest

from perceptsr.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--profile", "tiny", "--no-progress"]) == 0
    return out


def test_the_demo_is_both_reproductions_with_their_tables(demo_run, capsys):
    out = demo_run
    for folder, experiment in (("ranksrgan", "ranksrgan"), ("ea_adam", "ea-adam")):
        summary = json.loads((out / folder / "summary.json").read_text())
        assert summary["experiment"] == experiment and summary["seeds_done"] == [0]
        assert summary["commands"]["reproduce"] == [f"perceptsr demo --out {out} --profile tiny"]
    html = (out / "report.html").read_text()
    for name in ("SRGAN", "RankSRGAN", "within-location accuracy", "EA-Adam member 1", "weighted-sum Adam member 1",
                 "EA-Adam fused", "Hypervolume"):
        assert name in html, name
    assert "data:image/png;base64," in html


def test_a_rerun_continues_and_prints_the_same_tables(demo_run, capsys):
    out = demo_run
    assert main(["demo", "--out", str(out), "--profile", "tiny", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert said.count("already done") == 2 * 3 + 6 + 5  # common stages of both, then each one's seed stages
    assert "| photos | SRGAN |" in said and "| photos | RankSRGAN |" in said and "| photos | EA-Adam fused |" in said
    assert "not the papers' results" in said
