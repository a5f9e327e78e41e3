"""``perceptsr reproduce --ablation``: which stages an ablation reruns, its folder and summary, refusals."""

from __future__ import annotations

import json

import pytest

from perceptsr.cli import main
from perceptsr.errors import ConfigError
from perceptsr.reproduce import run_reproduce
from perceptsr.reproduce import ea_adam as ea_plan
from perceptsr.reproduce import ranksrgan as rank_plan
from perceptsr.reproduce.graph import parse_ablation, rerun
from perceptsr.reproduce.profiles import get_profile, override_profile


@pytest.mark.parametrize("text, stages", [
    ("rank_weight=0.01", ["ranksrgan", "eval"]),
    ("rank_bn_mode=train", ["ranksrgan", "eval"]),
    ("rank_floor=hr", ["ranksrgan", "eval"]),
    ("ranker.iterations=9", ["ranker", "ranksrgan", "eval"]),
    ("rank_data.min_gap=0.5", ["rank_data", "ranker", "ranksrgan", "eval"]),
    ("rank_data.levels=hr:srgan:psnr", ["rank_data", "ranker", "ranksrgan", "eval"]),
    ("gan.iterations=9", ["srgan", "rank_data", "ranker", "ranksrgan", "eval"]),
    ("gan.patch_size=48", ["srgan", "rank_data", "ranker", "ranksrgan", "eval"]),
    ("psnr.iterations=9", ["psnr", "srgan", "rank_data", "ranker", "ranksrgan", "eval"]),
])
def test_ranksrgan_ablation_reruns_what_reads_the_field_and_what_follows(text, stages):
    assert rerun(rank_plan.SEED_STAGES, parse_ablation(text).overrides) == stages


@pytest.mark.parametrize("text, stages", [
    ("ea.t_ea=9", ["ea_adam", "fusion", "eval"]),  # weighted-sum Adam never runs an EA phase
    ("ea.iterations=9", ["ea_adam", "ws_adam", "fusion", "eval"]),
    ("fuse_images=3", ["fusion", "eval"]),
    ("sweep=0:1", ["eval"]),
])
def test_ea_adam_ablation_reruns_what_reads_the_field_and_what_follows(text, stages):
    assert rerun(ea_plan.SEED_STAGES, parse_ablation(text).overrides) == stages


def test_overrides_are_typed_and_bad_ones_are_refused_in_one_line():
    p = get_profile("ranksrgan", "cpu")
    q = override_profile(p, {"rank_weight": "0.01", "ranker.iterations": "2000", "rank_data.gap_levels": "srgan:bicubic",
                             "ranker.swap_order": "false"})
    assert (q.rank_weight, q.ranker.iterations, q.rank_data.gap_levels, q.ranker.swap_order) == \
        (0.01, 2000, ("srgan", "bicubic"), False)
    assert (p.rank_weight, p.ranker.iterations) == (0.03, 800)  # the profile itself is untouched
    with pytest.raises(ConfigError, match="the profile has no field 'rank_wieght'; did you mean 'rank_weight'"):
        override_profile(p, {"rank_wieght": "1"})
    with pytest.raises(ConfigError, match="'data' is shared by every stage"):
        override_profile(p, {"data.train": "x"})
    with pytest.raises(ConfigError, match=r"ranker.iterations=x: not a int"):
        override_profile(p, {"ranker.iterations": "x"})
    assert override_profile(p, {"rank_data.levels": "hr:srgan:psnr"}).rank_data.levels == ("hr", "srgan", "psnr")
    with pytest.raises(ConfigError, match=r"rank_data.levels \['hr', 'srgan'\] lacks psnr"):
        override_profile(p, {"rank_data.levels": "hr:srgan"})  # the cpu profile's gap pair is srgan / psnr
    with pytest.raises(ConfigError, match="two or more distinct names of hr, srgan, psnr, bicubic"):
        override_profile(p, {"rank_data.levels": "hr:esrgan:srgan:psnr"})
    with pytest.raises(ConfigError, match="'a' is not KEY=VALUE"):
        parse_ablation("rank_weight=1,a")
    with pytest.raises(ConfigError, match="letters, digits"):
        parse_ablation("rank_weight=1/2")


def test_an_ablation_retrains_only_its_stages_and_is_summarised_against_the_same_control(tmp_path, capsys):
    out = tmp_path / "run"
    run_reproduce("ranksrgan", "tiny", 1, out, progress=False)
    capsys.readouterr()
    summary = run_reproduce("ranksrgan", "tiny", 1, out, progress=False, ablations=["rank_weight=0.5"])
    printed = capsys.readouterr().out
    assert printed.count("already done") == 3 + 6  # the common stages and the seed's own
    folder = out / "seed_0" / "ablation" / "rank_weight=0.5"
    assert sorted(p.name for p in folder.iterdir()) == ["eval", "ranksrgan"]
    config = (folder / "ranksrgan" / "RankSRGAN" / "config.yml").read_text()
    assert "weight: 0.5" in config and str(out / "seed_0" / "ranker") in config
    evaluated = {s["model"] for s in json.loads((folder / "eval" / "results.json").read_text())["summary"]}
    assert evaluated == {"RankSRGAN"}  # the control and the PSNR model are the seed's own, not re-scored

    ablation = summary["ablations"]["rank_weight=0.5"]
    assert ablation["overrides"] == {"rank_weight": "0.5"} and ablation["reruns"] == ["ranksrgan", "eval"]
    own, ab = summary["per_seed"]["0"], ablation["per_seed"]["0"]
    assert ab["datasets"]["photos"]["srgan"] == own["datasets"]["photos"]["srgan"]
    assert ab["ranker"] == own["ranker"]
    assert ab["datasets"]["photos"]["ranksrgan"] != own["datasets"]["photos"]["ranksrgan"]
    d = ab["datasets"]["photos"]
    assert d["ranksrgan_minus_srgan"]["psnr"] == pytest.approx(d["ranksrgan"]["psnr"] - d["srgan"]["psnr"])
    assert "Ablations" in (out / "report.html").read_text()

    # the folder keeps its ablations: the plain command continues them, nothing is redone
    again = run_reproduce("ranksrgan", "tiny", 1, out, progress=False)
    assert again["ablations"] == summary["ablations"]
    assert json.loads((out / "reproduce.json").read_text())["ablations"] == ["rank_weight=0.5"]


def test_a_bad_ablation_is_refused_before_the_folder_is_touched(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "ranksrgan", "--profile", "tiny", "--out", str(out), "--ablation", "gan.iterashuns=3",
                 "--no-progress"]) == 1
    assert "gan has no field 'iterashuns'; did you mean 'iterations'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("experiment, module", [("ranksrgan", rank_plan), ("ea-adam", ea_plan)])
def test_every_profile_field_is_shared_or_read_by_a_stage(experiment, module):
    """A field no stage declares would make an ablation of it silently rerun nothing."""
    import dataclasses

    from perceptsr.reproduce.profiles import COMMON_FIELDS

    reads = {r.split(".")[0] for s in module.SEED_STAGES for r in s.reads}
    fields = {f.name for f in dataclasses.fields(get_profile(experiment, "cpu"))}
    assert fields - set(COMMON_FIELDS) == reads


def test_a_folder_started_before_a_field_existed_matches_at_its_default(tmp_path):
    from perceptsr.reproduce.profiles import field_defaults, profile_dict
    from perceptsr.reproduce.runner import ReproduceError, Runner

    profile = get_profile("ranksrgan", "tiny")
    settings = profile_dict(profile)
    old = json.loads(json.dumps(settings))
    del old["ranker"]["crop"]  # as written before RankerProfile.crop existed
    (tmp_path / "reproduce.json").write_text(json.dumps({"format": "perceptsr-reproduce/1", "experiment": "ranksrgan",
                                                         "profile": "tiny", "settings": old, "seeds": [0]}))

    def runner(s):
        return Runner(tmp_path, "ranksrgan", "tiny", s, [0], "test", False, defaults=field_defaults(profile))

    changed = json.loads(json.dumps(settings))
    changed["ranker"]["crop"] = 64
    with pytest.raises(ReproduceError, match=r"ranker\.crop: None then, 64 now"):
        runner(changed).open()
    assert runner(settings).open()["settings"] == settings
