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


def _matlab_grid(h: int, w: int, size: int, stride: int) -> list[tuple[int, int]]:
    """generate_rankdataset.m's loops ``for i = 1:stride:h-size`` / ``for j = 1:stride:w-size`` (1-based
    tops, the last one <= h - size), as 0-based corners."""
    return [(i - 1, j - 1) for i in range(1, h - size + 1, stride) for j in range(1, w - size + 1, stride)]


def test_patch_grid_is_the_release_grid():
    assert len(patch_grid(1356, 2040, 296, 148)) == 8 * 12  # spec §2.2: a 2040x1356 image gives 96
    # 444 - 296 = 148 is a multiple of the stride: MATLAB's 1:148:148 is just 1, no patch at left 148
    assert patch_grid(300, 444, 296, 148) == [(0, 0)]
    assert patch_grid(296, 296, 296, 148) == []  # MATLAB's 1:148:0 is empty
    assert patch_grid(297, 297, 296, 148) == [(0, 0)]
    assert patch_grid(295, 1000, 296, 148) == []
    for h, w in ((592, 740), (593, 741), (1356, 2040), (64, 96), (65, 200)):
        for size, stride in ((296, 148), (64, 32), (64, 64)):
            assert patch_grid(h, w, size, stride) == _matlab_grid(h, w, size, stride), (h, w, size, stride)


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
    # grid on 192x240 with 64/32: 4 x 6 locations per image (tops 0..96: MATLAB's 1:32:128 stops at
    # 97); the right 96 columns are flat, so the patches at left 128 (a quarter textured, sharpness
    # ~1.6) and 160 (flat, 0) fail the threshold 3
    assert summary["complete"] and summary["images"] == 3
    assert summary["filters"]["candidates"] == 3 * 24
    assert summary["filters"]["textured"] == 3 * 16
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

    folders = write_levels(tmp_path / "lv", 1, size=(300, 300))  # a 296-px image gives no patch
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
    printed = capsys.readouterr().out
    assert "triplets: 4 train, 0 valid" in printed  # 128x192 with 64/64: tops 0, lefts 0 and 64
    assert "label order hr < other < bicubic:" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [lv["name"] for lv in summary["levels"]] == ["hr", "other", "bicubic"]
    assert summary["texture_level"] == "other" and summary["gap_levels"] == ["other", "bicubic"]
    assert len(list((out / "levels" / "bicubic").glob("*.png"))) == 2
    shutil.rmtree(out / "train_patch_hr")
    assert main(["rank-data", "--out", str(out), "--level", f"a={sr}"]) == 1  # one level only: clear error


def test_a_failed_device_run_does_not_poison_the_next_cpu_run(toy_levels, tmp_path):
    # issue 10: the in-process worker state kept the failure of a CUDA run, and the next CPU call in
    # the same process raised that same error again
    opts = RankDataOptions(**TOY)
    with pytest.raises(PerceptsrError, match=r"cannot set up metric 'toy_blur' on device 'cuda:99'"):
        build_rank_dataset(_levels(toy_levels), tmp_path / "out", opts, progress=False, device="cuda:99")
    summary = build_rank_dataset(_levels(toy_levels), tmp_path / "out", opts, progress=False, device="cpu")
    assert summary["complete"] and summary["images"] == 3
    reference = build_rank_dataset(_levels(toy_levels), tmp_path / "ref", opts, progress=False, device="cpu")
    assert _tree(tmp_path / "out") == _tree(tmp_path / "ref")


def test_valid_split_is_exactly_int_fraction_of_the_triplets(toy_levels, tmp_path):
    from perceptsr.ranksrgan import valid_count

    assert valid_count(0.1, 35) == 3 and valid_count(0.29, 100) == 29 and valid_count(0.1, 9) == 0
    draws = {}
    for seed in (0, 1, 2):
        opts = RankDataOptions(**{**TOY, "valid_fraction": 0.3, "seed": seed})
        out = tmp_path / f"s{seed}"
        summary = build_rank_dataset(_levels(toy_levels), out, opts, progress=False)
        total = summary["triplets"]["train"] + summary["triplets"]["valid"]
        want = int(0.3 * total)  # 14 of 48; a coin per triplet gives 14 +- 3
        assert summary["triplets"]["valid"] == want, (seed, summary["triplets"])
        valid_lines = (out / "valid_label.txt").read_text().splitlines()
        valid_ids = {int(line.split("_")[0]) for line in valid_lines}
        assert len(valid_ids) == want and len(valid_lines) == 3 * want
        assert {int(p.name.split("_")[0]) for p in (out / "valid_patch_all").iterdir()} == valid_ids
        for level in BLURS:
            train_ids = {int(p.name.split("_")[0]) for p in (out / f"train_patch_{level}").iterdir()}
            assert train_ids == set(range(1, total + 1)) - valid_ids
        draws[seed] = valid_ids
    assert len({frozenset(v) for v in draws.values()}) == 3  # a seeded random subset, not the first or last
    again = build_rank_dataset(_levels(toy_levels), tmp_path / "again", RankDataOptions(**{**TOY, "valid_fraction": 0.3}),
                               progress=False)
    assert again["triplets"]["valid"] == 14 and _tree(tmp_path / "again") == _tree(tmp_path / "s0")

    # drawn once the dataset is complete (as move_valid.py after the cut): until then all is train
    part = build_rank_dataset(_levels(toy_levels), tmp_path / "part", RankDataOptions(**{**TOY, "valid_fraction": 0.3}),
                              progress=False, stop_after=2)
    assert part["triplets"] == {"train": 32, "valid": 0} and not (tmp_path / "part" / "valid_patch_all").exists()
    build_rank_dataset(_levels(toy_levels), tmp_path / "part", RankDataOptions(**{**TOY, "valid_fraction": 0.3}),
                       progress=False)
    assert _tree(tmp_path / "part") == _tree(tmp_path / "s0")


def test_summary_reports_filters_and_level_consistency(tmp_path):
    """HR / soft / blurry levels where the two SR levels are swapped in one image of three."""
    folders = write_levels(tmp_path / "lv", 3)
    soft, blurry = tmp_path / "mixed_soft", tmp_path / "mixed_blurry"
    for i in range(3):
        swap = i == 1
        write_image(soft / f"img{i}.png", read_u8(folders["blurry" if swap else "soft"] / f"img{i}.png"))
        write_image(blurry / f"img{i}.png", read_u8(folders["soft" if swap else "blurry"] / f"img{i}.png"))
    levels = [RankLevel("hr", str(folders["sharp"]), hr=True), RankLevel("soft", str(soft)), RankLevel("blurry", str(blurry))]
    opts = RankDataOptions(**{**TOY, "texture_threshold": 0.0, "valid_fraction": 0.0})
    summary = build_rank_dataset(levels, tmp_path / "out", opts, progress=False)
    assert summary["texture_level"] == "soft" and summary["gap_levels"] == ["soft", "blurry"]
    assert summary["filters"] == {"candidates": 72, "textured": 72, "gap": 72, "kept": 72}
    c = summary["consistency"]
    assert c["order"] == ["hr", "soft", "blurry"] and c["triplets"] == 72
    assert c["ordered"] == pytest.approx(2 / 3)
    assert c["pairs"] == {"hr<soft": 1.0, "hr<blurry": 1.0, "soft<blurry": pytest.approx(2 / 3)}
    assert c["best"] == {"hr": 72, "soft": 0, "blurry": 0}
    assert c["worst"] == {"hr": 0, "soft": 24, "blurry": 48}
    labels = {name: [float(line.split()[1]) for line in (tmp_path / "out" / "train_label.txt").read_text().splitlines()
                     if line.split("_", 1)[1].startswith(name + ".")] for name in c["order"]}
    assert c["mean_label"] == {name: pytest.approx(np.mean(v)) for name, v in labels.items()}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["consistency"] == c
