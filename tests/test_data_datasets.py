"""Paired datasets: pairing, alignment, determinism, caching, bad files, sharding and seeding."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from perceptsr.data import (
    EpochSampler,
    PairedImageDataset,
    PairedValDataset,
    build_train_loader,
    build_val_loader,
    imresize,
    worker_init_fn,
    write_image,
)
from perceptsr.errors import ConfigError, ImageReadError


@pytest.fixture
def blocky(tmp_path):
    """HR = every LR pixel repeated 4x4 (plus a ragged edge modcrop removes), LR saved as ``<stem>x4.png``."""
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(9, 11), (8, 8), (12, 7), (10, 10), (7, 13)]):
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        hr = np.kron(lr, np.ones((4, 4, 1), np.uint8))
        hr = np.pad(hr, ((0, 3), (0, 2), (0, 0)))  # not a multiple of 4: must be modcropped
        write_image(tmp_path / "hr" / f"img{k}.png", hr)
        write_image(tmp_path / "lr" / f"img{k}x4.png", lr)
    return tmp_path / "hr", tmp_path / "lr"


def _assert_aligned(item):
    lr, hr = item["lr"], item["hr"]
    assert lr.dtype == torch.float32 and hr.shape[-2:] == (lr.shape[-2] * 4, lr.shape[-1] * 4)
    torch.testing.assert_close(hr, lr.repeat_interleave(4, -2).repeat_interleave(4, -1), rtol=0, atol=0)


def test_patches_aligned_under_every_augmentation(blocky):
    ds = PairedImageDataset(*blocky, scale=4, patch_size=24, seed=3)
    assert len(ds) == 5
    seen = set()
    for epoch in range(6):
        for j in range(len(ds)):
            item = ds[(epoch, j)]
            assert item["lr"].shape == (3, 6, 6) and item["name"] == f"img{j}"
            _assert_aligned(item)
            seen.add(item["hr"].numpy().tobytes())
    assert len(seen) >= 25  # crops/augmentations change with the epoch (a few may coincide)


def test_determinism_depends_only_on_seed_epoch_index(blocky):
    a = PairedImageDataset(*blocky, scale=4, patch_size=16, seed=1)
    b = PairedImageDataset(*blocky, scale=4, patch_size=16, seed=1, cache=True)
    for key in [(0, 2), (5, 2), (5, 7)]:
        torch.testing.assert_close(a[key]["hr"], b[key]["hr"])
    assert not torch.equal(a[(0, 2)]["hr"], a[(1, 2)]["hr"])
    assert not torch.equal(a[(0, 2)]["hr"], a[(0, 7)]["hr"])  # a repeat of sample 2 gets its own crop
    c = PairedImageDataset(*blocky, scale=4, patch_size=16, seed=2)
    assert not torch.equal(a[(0, 2)]["hr"], c[(0, 2)]["hr"])
    a.set_epoch(5)
    torch.testing.assert_close(a[2]["hr"], b[(5, 2)]["hr"])


def test_augment_flags_off_gives_plain_crop(blocky):
    ds = PairedImageDataset(*blocky, scale=4, patch_size=16, seed=0, hflip=False, vflip=False, rot90=False)
    full = PairedValDataset(*blocky, scale=4)
    assert tuple(full[0]["hr"].shape) == (3, 36, 44)  # 39x46 HR modcropped, 9x11 LR
    for j in range(5):
        patch, whole = ds[(0, j)]["lr"], full[j]["lr"]
        hits = [
            (t, l)
            for t in range(whole.shape[1] - 3)
            for l in range(whole.shape[2] - 3)
            if torch.equal(whole[:, t : t + 4, l : l + 4], patch)
        ]
        assert hits, "the LR patch is an unflipped window of the LR image"


def test_loader_batches_independent_of_workers(blocky):
    def batches(workers):
        loader = build_train_loader(*blocky, scale=4, patch_size=16, batch_size=2, num_workers=workers, seed=7,
                                    repeat=2)
        out = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            out += [(b["hr"], b["name"]) for b in loader]
        return out

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 2 * 5  # 5 images x repeat 2 / batch 2, per epoch
    for (h0, n0), (h1, n1) in zip(serial, parallel):
        assert n0 == n1
        torch.testing.assert_close(h0, h1, rtol=0, atol=0)


def test_lr_made_on_the_fly_is_matlab_bicubic_of_modcropped_hr(blocky):
    hr_dir, _ = blocky
    val = PairedValDataset(hr_dir, scale=4)
    item = val[1]
    hr_u8 = np.round(item["hr"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert hr_u8.shape == (32, 32, 3)
    expect = imresize(hr_u8, 0.25).astype(np.float32) / 255
    np.testing.assert_array_equal(item["lr"].permute(1, 2, 0).numpy(), expect)
    train = PairedImageDataset(hr_dir, scale=4, patch_size=16, cache=True)
    assert train[(0, 0)]["lr"].shape == (3, 4, 4)


def test_val_dataset_and_loader_on_benchmark(benchmark_dir):
    loader = build_val_loader(benchmark_dir / "Set5" / "HR", benchmark_dir / "Set5" / "LR_bicubic" / "X4", scale=4)
    names = []
    for batch in loader:
        assert batch["hr"].shape[-2:] == (batch["lr"].shape[-2] * 4, batch["lr"].shape[-1] * 4)
        names += batch["name"]
    assert names == ["baby", "bird", "butterfly", "head", "woman"]
    made = PairedValDataset(benchmark_dir / "Set5" / "HR", scale=4)
    same = (made[0]["lr"] * 255).round() == (loader.dataset[0]["lr"] * 255).round()
    assert same.float().mean() > 0.97  # MATLAB's own LR vs ours (uint8 grid, rounded per pass)


def test_pairing_errors(tmp_path, blocky):
    hr_dir, lr_dir = blocky
    write_image(hr_dir / "orphan.png", np.zeros((16, 16, 3)))
    write_image(lr_dir / "stray_x4.png", np.zeros((4, 4, 3)))
    with pytest.raises(ConfigError, match=r"(?s)HR without LR \(1\): orphan\.png.*LR without HR \(1\): stray_x4\.png"):
        PairedImageDataset(hr_dir, lr_dir, scale=4, patch_size=16)
    (hr_dir / "orphan.png").unlink()
    (lr_dir / "stray_x4.png").unlink()
    write_image(lr_dir / "img0.png", np.zeros((9, 11, 3)))
    with pytest.raises(ConfigError, match=r"several LR files match img0\.png: img0\.png, img0x4\.png"):
        PairedValDataset(hr_dir, lr_dir, scale=4)
    (lr_dir / "img0x4.png").unlink()
    assert PairedValDataset(hr_dir, lr_dir, scale=4)[0]["name"] == "img0"  # exact and suffixed stems mix


def test_size_and_option_errors(tmp_path):
    write_image(tmp_path / "hr" / "a.png", np.zeros((16, 16, 3)))
    write_image(tmp_path / "lr" / "a.png", np.zeros((5, 4, 3)))
    with pytest.raises(ConfigError, match=r"a\.png \(16x16\) is not 4x .*a\.png \(5x4\)"):
        PairedValDataset(tmp_path / "hr", tmp_path / "lr", scale=4)
    with pytest.raises(ConfigError, match="smaller than the LR patch"):
        PairedImageDataset(tmp_path / "hr", scale=4, patch_size=32)
    with pytest.raises(ConfigError, match="multiple of scale"):
        PairedImageDataset(tmp_path / "hr", scale=4, patch_size=10)
    with pytest.raises(ImageReadError, match="folder not found"):
        PairedImageDataset(tmp_path / "nothing", scale=4, patch_size=8)
    with pytest.raises(ConfigError, match="less than one batch"):
        build_train_loader(tmp_path / "hr", scale=4, patch_size=8, batch_size=2)


def test_bad_files_skipped_or_raised(tmp_path):
    hr = tmp_path / "hr"
    for name in "abc":
        write_image(hr / f"{name}.png", np.random.default_rng(0).random((16, 16, 3)))
    (hr / "b.png").write_bytes(b"garbage")
    data = (hr / "c.png").read_bytes()
    (hr / "c.png").write_bytes(data[: len(data) // 2])  # header intact, pixels truncated
    with pytest.raises(ImageReadError, match=r"b\.png"):
        PairedImageDataset(hr, scale=4, patch_size=8)
    with pytest.warns(UserWarning) as record:
        ds = PairedImageDataset(hr, scale=4, patch_size=8, skip_bad=True)
    assert len(ds) == 1 and ds[(0, 0)]["name"] == "a"
    assert [p.name for p, _ in ds.bad_files] == ["b.png", "c.png"]
    assert "truncated" in ds.bad_files[1][1]
    assert any("b.png" in str(w.message) for w in record) and any("c.png" in str(w.message) for w in record)
    (hr / "b.png").unlink()
    with pytest.raises(ImageReadError, match=r"c\.png.*truncated"):
        PairedImageDataset(hr, scale=4, patch_size=8, cache=True)
    lazy = PairedImageDataset(hr, scale=4, patch_size=8)  # headers fine: truncation found on first read
    with warnings.catch_warnings(), pytest.raises(ImageReadError, match=r"c\.png"):
        lazy[(0, 1)]


def test_epoch_sampler_shards_are_disjoint_and_seeded():
    shards = [list(EpochSampler(10, seed=4, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    flat = [j for s in shards for _, j in s]
    assert sorted(set(flat)) == list(range(10)) and len(flat) == 12  # padded by wrapping, like DistributedSampler
    two = [[j for _, j in EpochSampler(10, seed=4, rank=r, world_size=2)] for r in range(2)]
    assert not set(two[0]) & set(two[1]) and sorted(two[0] + two[1]) == list(range(10))
    s = EpochSampler(10, seed=4, rank=0, world_size=2, drop_last=True, repeat=3)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert len(first) == 15 and {e for e, _ in second} == {1} and [j for _, j in first] != [j for _, j in second]
    assert list(EpochSampler(10, seed=4, rank=0, world_size=2)) == list(EpochSampler(10, seed=4, rank=0, world_size=2))
    assert [j for _, j in EpochSampler(4, shuffle=False)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(4, rank=2, world_size=2)


def test_worker_init_fn_seeds_per_seed_rank_worker():
    def draw(worker, seed, rank):
        worker_init_fn(worker, seed=seed, rank=rank)
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    assert draw(0, 1, 0) == draw(0, 1, 0)
    values = {draw(w, s, r) for w in range(2) for s in range(2) for r in range(2)}
    assert len(values) == 8

