"""NIQE (LIVE release) against MATLAB and Octave runs of the official code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perceptsr.errors import AssetError, MetricInputError
from perceptsr.metrics import create_metric

BABOON_MATLAB = 5.72957338  # references/niqe_baboon.md (MATLAB R2021a, Y of rgb2ycbcr uint8)


def _rgb_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 255


def _gray_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr))[None, None].float() / 255


def _y_uint8(rgb: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr(uint8) Y: round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.floor(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255 + 0.5).astype(np.uint8)


def _x4_bicubic(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    small = img.resize((w // 4, h // 4), Image.BICUBIC)
    return np.asarray(small.resize((w // 4 * 4, h // 4 * 4), Image.BICUBIC))


def _octave_image(name: str) -> np.ndarray:
    """Rebuild the 'PIRM form' test images of references/ma_niqe_octave (see its README)."""
    data = pytest.importorskip("skimage.data")
    source = name.replace("_x4bicubic", "").replace("_y.png", "")
    rgb = getattr(data, source)()
    if "_x4bicubic" in name:
        rgb = _x4_bicubic(rgb)
    return _y_uint8(rgb)[4:-4, 4:-4]


def _octave_table(references_dir) -> dict[str, float]:
    table = {}
    for line in (references_dir / "ma_niqe_octave" / "octave_reference.txt").read_text().splitlines():
        parts = line.split()
        if parts:
            table[parts[0]] = float(parts[2])
    return table


@pytest.fixture(scope="module")
def niqe(assets_dir):
    return create_metric("niqe")


@pytest.fixture(scope="module")
def baboon(benchmark_dir):
    return _rgb_tensor(np.asarray(Image.open(benchmark_dir / "Set14" / "HR" / "baboon.png").convert("RGB")))


def test_baboon_matlab(niqe, baboon):
    """Default flat_mode="matlab" (MATLAB's imfilter arithmetic): the published R2021a value."""
    value = float(niqe(baboon))
    assert niqe.flat_mode == "matlab"
    assert abs(value / BABOON_MATLAB - 1) < 1e-6, value  # measured 8.8e-8


@pytest.mark.parametrize("mode, tol", [("exact", 1e-6), ("2d", 1e-4)])  # measured 8.8e-8, 2.4e-5
def test_baboon_other_flat_modes(assets_dir, baboon, mode, tol):
    value = float(create_metric("niqe", flat_mode=mode)(baboon))
    assert abs(value / BABOON_MATLAB - 1) < tol, value


def test_unknown_flat_mode(assets_dir):
    from perceptsr.errors import ConfigError

    with pytest.raises(ConfigError, match="flat_mode must be one of"):
        create_metric("niqe", flat_mode="fast")


OCTAVE_IMAGES = [
    "astronaut_y.png", "coffee_y.png", "chelsea_y.png", "rocket_y.png",
    "coffee_x4bicubic_y.png", "astronaut_x4bicubic_y.png",
]


@pytest.mark.parametrize("name", OCTAVE_IMAGES)
def test_octave_reference_2d_mode(assets_dir, references_dir, name):
    """Octave's imfilter is not MATLAB's: on images with flat areas (astronaut: ~12k flat 7x7
    neighbourhoods) only the 2-D-gain filter of flat_mode="2d" follows it."""
    want = _octave_table(references_dir)[name]
    y = _gray_tensor(_octave_image(name))
    got = float(create_metric("niqe", flat_mode="2d")(y))
    assert abs(got / want - 1) < 1e-3, (got, want)


def test_octave_reference_without_flat_areas(niqe, references_dir):
    """chelsea has no flat 7x7 neighbourhood: there the filters agree and Octave is a strict check."""
    want = _octave_table(references_dir)["chelsea_y.png"]
    got = float(niqe(_gray_tensor(_octave_image("chelsea_y.png")).double()))
    assert abs(got / want - 1) < 1e-9, (got, want)  # measured 1.8e-14


def test_batch_equals_single(niqe, references_dir):
    imgs = [_octave_image(n)[:288, :384] for n in ("astronaut_y.png", "coffee_y.png", "chelsea_y.png")]
    batch = torch.cat([_gray_tensor(a) for a in imgs])
    out = niqe(batch)
    single = torch.cat([niqe(_gray_tensor(a)) for a in imgs])
    assert out.shape == (3,)
    assert torch.equal(out, single), (out, single)


def test_npz_params_equal_mat(assets_dir, baboon):
    a = create_metric("niqe", params_path=assets_dir / "niqe" / "modelparameters.mat")(baboon)
    b = create_metric("niqe", params_path=assets_dir / "niqe" / "niqe_pris_params.npz")(baboon)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_pirm_preset_is_shave4(assets_dir, baboon):
    pirm = create_metric("niqe", preset="pirm")(baboon)
    shaved = create_metric("niqe")(baboon[..., 4:-4, 4:-4])
    torch.testing.assert_close(pirm, shaved)
    assert "preset=pirm" in create_metric("niqe", preset="pirm").protocol


def test_gray_protocol_is_rgb2gray_uint8(assets_dir, baboon):
    from perceptsr.data.color import rgb2gray

    arr = np.round(baboon[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    gray = rgb2gray(arr)  # uint8 in -> rounded uint8 out (MATLAB)
    want = create_metric("niqe")(_gray_tensor(gray))
    torch.testing.assert_close(create_metric("niqe", color="gray")(baboon), want)


def test_too_small(niqe):
    with pytest.raises(MetricInputError, match="at least 96x96"):
        niqe(torch.rand(1, 1, 95, 200))
    with pytest.raises(MetricInputError, match="two 96x96 blocks"):
        niqe(torch.rand(1, 1, 100, 100))


def test_missing_asset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTSR_ASSETS", str(tmp_path / "none"))
    monkeypatch.setenv("PERCEPTSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERCEPTSR_OFFLINE", "1")
    with pytest.raises(AssetError) as info:
        create_metric("niqe")
    msg = str(info.value)
    assert "niqe_params" in msg and "https://" in msg and "modelparameters.mat" in msg


def test_nan_statistics_match_matlab_semantics():
    from perceptsr.metrics.niqe import _nan_stats

    rng = np.random.default_rng(3)
    feat = rng.normal(size=(2, 30, 36))
    feat[0, 3, 5] = np.nan
    feat[0, 7, :] = np.nan
    feat[1, 11, 0] = np.nan
    mean, cov = _nan_stats(torch.from_numpy(feat))
    for i in range(2):
        f = feat[i]
        np.testing.assert_allclose(mean[i].numpy(), np.nanmean(f, axis=0), rtol=1e-12)  # nanmean
        complete = f[~np.isnan(f).any(axis=1)]  # nancov drops rows with any NaN
        np.testing.assert_allclose(cov[i].numpy(), np.cov(complete, rowvar=False), rtol=1e-10, atol=1e-12)


def test_aggd_lookup_equals_grid_argmin():
    from scipy.special import gamma

    from perceptsr.metrics.niqe import _aggd, _aggd_tables

    rng = np.random.default_rng(0)
    rows = [rng.normal(size=500) * s for s in (0.1, 1, 3)]
    rows += [rng.laplace(size=500), rng.standard_t(3, size=500), np.abs(rng.normal(size=500)),
             np.zeros(500), np.concatenate([-np.ones(10), rng.exponential(size=490)])]
    v = torch.from_numpy(np.stack(rows))
    alpha, bl, br, _ = _aggd(v, _aggd_tables("cpu"))
    grid = np.arange(0.2, 10.0005, 0.001)
    r_grid = gamma(2 / grid) ** 2 / (gamma(1 / grid) * gamma(3 / grid))
    for k, vec in enumerate(rows):  # estimateaggdparam.m, line by line
        with np.errstate(invalid="ignore", divide="ignore"):
            left = np.sqrt(np.mean(vec[vec < 0] ** 2)) if (vec < 0).any() else np.nan
            right = np.sqrt(np.mean(vec[vec > 0] ** 2)) if (vec > 0).any() else np.nan
            g = left / right
            rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec**2)
            rn = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
            d = (r_grid - rn) ** 2
        pos = 0 if np.all(np.isnan(d)) else int(np.nanargmin(d))  # MATLAB min: first index
        assert abs(float(alpha[k]) - grid[pos]) < 1e-9, k
        want_bl = left * np.sqrt(gamma(1 / grid[pos]) / gamma(3 / grid[pos]))
        np.testing.assert_allclose(float(bl[k]), want_bl, rtol=1e-12, equal_nan=True)


def _grey_samples():
    from skimage import data

    from perceptsr.data.color import rgb2gray

    return [rgb2gray(getattr(data, n)().astype(np.float64) / 255) * 255 for n in ("astronaut", "rocket", "coffee")]


def test_fit_niqe_params_keeps_all_blocks_when_threshold_is_negative():
    from perceptsr.metrics.niqe import _features, fit_niqe_params

    images = _grey_samples()
    mu, cov = fit_niqe_params(images, sharpness_threshold=-1.0)
    rows = []
    for im in images:
        h, w = im.shape[0] // 96 * 96, im.shape[1] // 96 * 96
        rows.append(_features(torch.from_numpy(np.ascontiguousarray(im[:h, :w]))[None])[0])
    feat = torch.cat(rows).numpy()
    np.testing.assert_allclose(mu, feat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(feat, rowvar=False), rtol=1e-10, atol=1e-14)


def test_fitted_model_scores_blur_worse(tmp_path):
    from perceptsr.data.imresize import imresize
    from perceptsr.metrics import create_metric
    from perceptsr.metrics.niqe import fit_niqe_params

    mu, cov = fit_niqe_params(_grey_samples())
    assert mu.shape == (36,) and cov.shape == (36, 36)
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-9
    path = tmp_path / "pristine.npz"
    np.savez(path, mu_pris_param=mu, cov_pris_param=cov)
    metric = create_metric("niqe", params_path=str(path))
    from skimage import data

    sharp = torch.from_numpy(data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)[None]
    blurred = imresize(imresize(sharp, 0.25), 4.0).clamp(0, 1)
    values = metric(torch.cat([sharp, blurred[..., : sharp.shape[-2], : sharp.shape[-1]]]))
    assert values[1] > values[0] + 1


def test_fit_niqe_params_errors_name_the_image():
    from perceptsr.errors import MetricInputError
    from perceptsr.metrics.niqe import fit_niqe_params

    with pytest.raises(MetricInputError, match="image 1 .*must be 2-D"):
        fit_niqe_params([np.zeros((96, 96)), np.zeros((96, 96, 3))])
    with pytest.raises(MetricInputError, match="image 0 \\(50x300\\) is smaller than one 96x96 block"):
        fit_niqe_params([np.zeros((50, 300))])
