"""The demo end to end at a tiny iteration budget (the real demo multiplies every count by 1)."""

import json

import numpy as np
import pytest

from perceptsr.demo import STAGES, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    ctx = run_demo(out, iterations_scale=0.005, progress=False)
    return out, ctx


def test_every_stage_finishes_and_records_its_results(demo_run):
    out, ctx = demo_run
    assert list(ctx.results) == list(STAGES)
    for name in STAGES:
        assert json.loads((out / name / "done.json").read_text())["seconds"] >= 0
    html = (out / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    results = json.loads((out / "eval" / "results.json").read_text())
    entries = {row["model"] for row in results["summary"]}
    assert entries == {"bicubic", "PSNR (MSRResNet)", "SRGAN", "RankSRGAN", "EA-Adam member 1",
                       "EA-Adam member 2", "EA-Adam fused"}
    rank = ctx.results["rank_data"]["summary"]
    assert rank["complete"] and (out / "rank_data" / "dataset" / "train_label.txt").is_file()
    assert set(ctx.results["ranker"]["val"]) >= {"val/srocc", "val/kendall", "val/accuracy"}


def test_niqe_stage_uses_the_official_model_or_records_which_one_it_used(demo_run):
    from perceptsr.assets import find_local

    out, ctx = demo_run
    info = ctx.results["niqe"]
    official = find_local("niqe_params") or find_local("niqe_params_npz")
    assert info["official"] is (official is not None)
    if official is not None:
        assert info["params_path"] == str(official)
    else:
        with np.load(info["params_path"]) as params:
            assert params["mu_pris_param"].shape == (36,)


def test_niqe_model_is_fitted_when_the_official_one_is_missing(demo_run, tmp_path, monkeypatch):
    import perceptsr.assets
    from perceptsr.demo import DemoContext, stage_niqe

    out, ctx = demo_run
    monkeypatch.setattr(perceptsr.assets, "find_local", lambda name: None)
    offline = DemoContext(tmp_path / "offline")
    offline.results["data"] = ctx.results["data"]
    offline.stage_dir("niqe").mkdir(parents=True)
    info = stage_niqe(offline)
    assert info["official"] is False
    with np.load(info["params_path"]) as params:
        assert params["mu_pris_param"].shape == (36,)
        assert params["cov_pris_param"].shape == (36, 36)
        assert np.all(np.isfinite(params["mu_pris_param"]))


def test_rerun_skips_finished_stages(demo_run, capsys):
    out, _ = demo_run
    ctx = run_demo(out, iterations_scale=0.005, progress=False)
    said = capsys.readouterr().out
    assert said.count("already done") == len(STAGES)
    assert "not the papers' results" in said
    assert set(ctx.results) == set(STAGES)


def test_user_data_folder_is_split_and_checked(tmp_path):
    from perceptsr.data.io import write_image
    from perceptsr.demo import DemoContext, stage_data
    from perceptsr.errors import ImageReadError

    rng = np.random.default_rng(0)
    for i in range(5):
        write_image(tmp_path / "in" / f"img{i}.png", rng.random((130, 150, 3), dtype=np.float32))
    ctx = DemoContext(tmp_path / "out", data=tmp_path / "in")
    ctx.stage_dir("data").mkdir(parents=True)
    info = stage_data(ctx)
    assert (info["train_images"], info["test_images"]) == (4, 1)
    assert sorted(p.name for p in (tmp_path / "out/data/test/HR").iterdir()) == ["img4.png"]
    write_image(tmp_path / "few" / "a.png", rng.random((130, 150, 3), dtype=np.float32))
    with pytest.raises(ImageReadError, match="needs at least 3 images"):
        stage_data(DemoContext(tmp_path / "out2", data=tmp_path / "few"))
