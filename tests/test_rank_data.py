"""RankSRGAN stage 1 (``perceptsr.ranksrgan.build_rank_dataset`` and ``perceptsr rank-data``): patch
grid and alignment, texture and gap filters, cap, split, label file format, resume, workers, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from _rank_toy import BLURS, read_u8, texture, toy_label, write_levels

from perceptsr.data.color import rgb2gray
from perceptsr.data.io import write_image
from perceptsr.errors import ConfigError, PerceptsrError
from perceptsr.ranksrgan import RankDataOptions, RankLevel, build_rank_dataset, patch_grid, sharpness

TOY = dict(patch_size=64, stride=32, metric="toy_blur", preset=None, texture_threshold=3.0, min_gap=0.0,
           valid_fraction=0.25)


def _levels(folders) -> list[RankLevel]:
    return [RankLevel(name, str(folder)) for name, folder in folders.items()]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()[1:]]


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("progress.jsonl", "summary.json")}


@pytest.fixture(scope="module")
def toy_levels(tmp_path_factory):
    return write_levels(tmp_path_factory.mktemp("levels"), 3, flat_right=96)


def test_patch_grid_is_the_release_grid():
    assert len(patch_grid(1356, 2040, 296, 148)) == 8 * 12  # spec §2.2: a 2040x1356 image gives 96
    assert patch_grid(300, 444, 296, 148) == [(0, 0), (0, 148)]
    assert patch_grid(295, 1000, 296, 148) == []


def _sharpness_reference(patch: np.ndarray) -> float:
    """Straight from the spec: 2-D Gaussian window, replicate padding, blkproc zero-padded means."""
    gray = rgb2gray(patch).astype(np.float64)
    r = np.arange(-3, 4)
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (7 / 6) ** 2))
    win /= win.sum()

    def filt(x):
        p = np.pad(x, 3, mode="edge")
        return sum(win[i, j] * p[i : i + x.shape[0], j : j + x.shape[1]] for i in range(7) for j in range(7))

    sigma = np.sqrt(filt((gray - filt(gray)) ** 2))
    total = 0.0
    for top in range(0, sigma.shape[0], 96):
        for left in range(0, sigma.shape[1], 96):
            total += sigma[top : top + 96, left : left + 96].sum() / (96 * 96)
    return total


def test_sharpness_matches_the_spec_definition():
    rng = np.random.default_rng(0)
    patches = np.stack([(texture(296, 296, seed=s) * 255).round().astype(np.uint8) for s in range(2)])
    got = sharpness(patches)
    for p, g in zip(patches, got):
        assert g == pytest.approx(_sharpness_reference(p), rel=1e-9)
    assert sharpness(np.full((296, 296, 3), 77, np.uint8)) == 0.0
    noise = rng.integers(0, 256, (130, 200, 3), dtype=np.uint8)
    assert sharpness(noise) == pytest.approx(_sharpness_reference(noise), rel=1e-9)


def test_build_alignment_filters_split_and_labels(toy_levels, tmp_path):
    out = tmp_path / "rank"
    summary = build_rank_dataset(_levels(toy_levels), out, RankDataOptions(**TOY), progress=False)
    names = list(BLURS)
    # grid on 192x240 with 64/32: 5 x 6 locations per image; the right 96 columns are flat, so the
    # patches at left 128 (a quarter textured, sharpness ~1.6) and 160 (flat, 0) fail the threshold 3
    assert summary["complete"] and summary["images"] == 3
    assert summary["filters"]["candidates"] == 3 * 30
    assert summary["filters"]["textured"] == 3 * 20
    records = _records(out)
    for r in records:
        assert {left for _, left in r["locations"]} == {0, 32, 64, 96}
    total = sum(len(r["locations"]) for r in records)
    assert summary["triplets"]["train"] + summary["triplets"]["valid"] == total
    assert 0 < summary["triplets"]["valid"] < total

    # label files: "<n>_<level>.png <6 decimals>", worst level first within each location
    rows = {}
    for split in ("train", "valid"):
        lines = (out / f"{split}_label.txt").read_text().splitlines()
        assert all(re.fullmatch(r"\d+_(sharp|soft|blurry)\.png -?\d+\.\d{6}", line) for line in lines)
        for i in range(0, len(lines), 3):
            ids = {line.split("_")[0] for line in lines[i : i + 3]}
            assert len(ids) == 1
            assert [line.split()[0].split("_")[1][:-4] for line in lines[i : i + 3]] == names[::-1]
        rows.update({line.split()[0]: (split, float(line.split()[1])) for line in lines})
    assert len(rows) == 3 * total

    # every patch is the aligned crop of its level's image, and its label is the metric of it
    for r in records:
        stem = r["image"]
        for k, (top, left) in enumerate(r["locations"]):
            n = r["first"] + k
            for level in names:
                split, score = rows[f"{n}_{level}.png"]
                folder = f"train_patch_{level}" if split == "train" else "valid_patch_all"
                patch = read_u8(out / folder / f"{n}_{level}.png")
                src = read_u8(toy_levels[level] / f"{stem}.png")
                np.testing.assert_array_equal(patch, src[top : top + 64, left : left + 64])
                assert score == pytest.approx(toy_label(patch), abs=1e-6)
            assert rows[f"{n}_blurry.png"][1] > rows[f"{n}_soft.png"][1] > rows[f"{n}_sharp.png"][1]
    assert not (out / ".work").exists()


def test_gap_filter_and_cap(toy_levels, tmp_path):
    import torch

    from perceptsr.metrics import create_metric

    loose = build_rank_dataset(_levels(toy_levels), tmp_path / "a", RankDataOptions(**TOY), progress=False)
    # the gap metric runs with the release's filter protocol (gray, no shave), not the label one
    gap_metric = create_metric("toy_blur", color="gray", crop_border=0, round_uint8=True)
    gaps = []
    for r in _records(tmp_path / "a"):
        for top, left in r["locations"]:
            vals = []
            for level in ("sharp", "soft"):
                src = read_u8(toy_levels[level] / f"{r['image']}.png")[top : top + 64, left : left + 64]
                vals.append(float(gap_metric(torch.from_numpy(src).permute(2, 0, 1)[None].float() / 255)[0]))
            gaps.append(abs(vals[0] - vals[1]))
    threshold = float(np.median(gaps))
    strict = build_rank_dataset(_levels(toy_levels), tmp_path / "b", RankDataOptions(**{**TOY, "min_gap": threshold}),
                                progress=False)
    assert strict["filters"]["gap"] == sum(g > threshold for g in gaps) < loose["filters"]["gap"]

    capped = build_rank_dataset(_levels(toy_levels), tmp_path / "c", RankDataOptions(**{**TOY, "max_patches": 4}),
                                progress=False)
    assert capped["filters"]["kept"] == 3 * 4
    for r, full in zip(_records(tmp_path / "c"), _records(tmp_path / "a")):
        assert set(map(tuple, r["locations"])) <= set(map(tuple, full["locations"]))


def test_split_by_image_keeps_an_image_in_one_split(toy_levels, tmp_path):
    opts = RankDataOptions(**{**TOY, "split_by": "image", "valid_fraction": 0.5, "seed": 0})
    summary = build_rank_dataset(_levels(toy_levels), tmp_path, opts, progress=False)
    splits = [set(r["splits"]) for r in _records(tmp_path)]
    assert all(len(s) == 1 for s in splits) and {"train", "valid"} == set().union(*splits)
    assert summary["triplets"]["valid"] == sum(len(r["splits"]) for r in _records(tmp_path) if r["splits"][0] == "valid")


def test_resume_after_interruption_gives_the_same_dataset(toy_levels, tmp_path):
    opts = RankDataOptions(**TOY)
    build_rank_dataset(_levels(toy_levels), tmp_path / "full", opts, progress=False)
    part = tmp_path / "part"
    first = build_rank_dataset(_levels(toy_levels), part, opts, progress=False, stop_after=1)
    assert not first["complete"] and first["images"] == 1
    # simulate a kill in the middle of image 2: a torn progress line and scratch files
    with open(part / "progress.jsonl", "a") as f:
        f.write('{"image": "img1", "locati')
    (part / ".work" / "img1").mkdir(parents=True)
    (part / ".work" / "img1" / "0_sharp.png").write_bytes(b"junk")
    done = build_rank_dataset(_levels(toy_levels), part, opts, progress=False)
    assert done["complete"] and done["images"] == 3
    assert _tree(part) == _tree(tmp_path / "full")


def test_worker_processes_give_the_same_dataset(toy_levels, tmp_path):
    opts = RankDataOptions(**TOY)
    build_rank_dataset(_levels(toy_levels), tmp_path / "a", opts, progress=False, workers=0, device="cpu")
    build_rank_dataset(_levels(toy_levels), tmp_path / "b", opts, progress=False, workers=2)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_changed_settings_are_refused(toy_levels, tmp_path):
    build_rank_dataset(_levels(toy_levels), tmp_path, RankDataOptions(**TOY), progress=False, stop_after=1)
    with pytest.raises(PerceptsrError, match="other settings.*stride"):
        build_rank_dataset(_levels(toy_levels), tmp_path, RankDataOptions(**{**TOY, "stride": 48}), progress=False)


def test_mismatched_levels_name_the_files(tmp_path):
    folders = write_levels(tmp_path / "lv", 2, size=(96, 96))
    (folders["soft"] / "img1.png").rename(folders["soft"] / "other.png")
    with pytest.raises(ConfigError, match=r"missing in .*soft: img1.*not in .*sharp: other"):
        build_rank_dataset(_levels(folders), tmp_path / "o1", RankDataOptions(**TOY), progress=False)
    (folders["soft"] / "other.png").rename(folders["soft"] / "img1.png")
    with pytest.raises(ConfigError, match="unknown metric 'nope'"):  # before any worker starts
        build_rank_dataset(_levels(folders), tmp_path / "o4", RankDataOptions(**{**TOY, "metric": "nope"}),
                           progress=False, workers=2)
    write_image(folders["blurry"] / "img0.png", np.zeros((80, 96, 3)))
    with pytest.raises(ConfigError, match=r"img0.*different sizes.*blurry.img0\.png \(80x96\)"):
        build_rank_dataset(_levels(folders), tmp_path / "o2", RankDataOptions(**TOY), progress=False)
    with pytest.raises(ConfigError, match="at least two levels"):
        build_rank_dataset(_levels(folders)[:1], tmp_path / "o3", RankDataOptions(**TOY), progress=False)


def test_niqe_labels_use_the_pirm_protocol(assets_dir, tmp_path):
    import torch

    from perceptsr.metrics import create_metric

    folders = write_levels(tmp_path / "lv", 1, size=(296, 296))
    summary = build_rank_dataset(_levels(folders), tmp_path / "out", RankDataOptions(valid_fraction=0.0),
                                 progress=False, device="cpu")
    assert summary["filters"]["kept"] == 1 and summary["label"]["transform"] == "none"
    niqe = create_metric("niqe", preset="pirm")
    for line in (tmp_path / "out" / "train_label.txt").read_text().splitlines():
        name, score = line.split()
        patch = read_u8(tmp_path / "out" / f"train_patch_{name[2:-4]}" / name)
        expected = float(niqe(torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 255)[0])
        assert float(score) == pytest.approx(expected, abs=1e-6)


def test_cli_with_bicubic_and_hr_levels(tmp_path, capsys):
    from perceptsr.cli import main
    from perceptsr.data.imresize import imresize

    hr = tmp_path / "hr"
    lr = tmp_path / "lr"
    sr = tmp_path / "sr"
    for i in range(2):
        img = texture(130, 194, seed=i)  # not a multiple of 4: HR is 2 px larger than 4x LR
        write_image(hr / f"im{i}.png", img)
        small = np.clip(imresize(img[:128, :192], 0.25), 0, 1)
        write_image(lr / f"im{i}.png", small)
        write_image(sr / f"im{i}.png", np.clip(imresize(small, 4) * 1.0, 0, 1)[..., ::-1].copy())
    out = tmp_path / "out"
    code = main(["rank-data", "--out", str(out), "--hr", str(hr), "--lr", str(lr), "--level", f"other={sr}",
                 "--level", "bicubic=bicubic", "--patch-size", "64", "--stride", "64", "--metric", "toy_blur",
                 "--preset", "pirm", "--texture-threshold", "0", "--min-gap", "0",
                 "--valid-fraction", "0", "--quiet"])
    assert code == 0
    assert "triplets: 12 train, 0 valid" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [lv["name"] for lv in summary["levels"]] == ["hr", "other", "bicubic"]
    assert summary["texture_level"] == "other" and summary["gap_levels"] == ["other", "bicubic"]
    assert len(list((out / "levels" / "bicubic").glob("*.png"))) == 2
    shutil.rmtree(out / "train_patch_hr")
    assert main(["rank-data", "--out", str(out), "--level", f"a={sr}"]) == 1  # one level only: clear error
