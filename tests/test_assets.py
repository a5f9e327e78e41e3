"""Asset registry and resolution: explicit path, PERCEPTSR_ASSETS, cache, download (file:// only)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from perceptsr import assets
from perceptsr.assets import Asset, AssetSource, asset_path, fetch_asset, list_assets
from perceptsr.errors import AssetError

REQUIRED = {
    "niqe_params", "niqe_params_npz", "lpips_alex", "lpips_vgg", "lpips_squeeze", "alexnet",
    "vgg16", "vgg19_caffe", "vgg19", "dists", "ma_model",
}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared assets, an empty cache in tmp_path, downloads allowed (only file:// used)."""
    monkeypatch.delenv("PERCEPTSR_ASSETS", raising=False)
    monkeypatch.delenv("PERCEPTSR_OFFLINE", raising=False)
    monkeypatch.setenv("PERCEPTSR_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _fake_asset(monkeypatch, url: str, sha: str | None, filename: str | None = None) -> Asset:
    asset = Asset(
        name="fake", relpath="fake/data.bin", sha256=sha, description="test file",
        sources=(AssetSource(url, filename=filename, sha256=sha),),
    )
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    return asset


def test_registry_names_and_fields():
    names = {a.name for a in list_assets()}
    assert REQUIRED <= names
    for a in list_assets():
        assert a.relpath and not a.relpath.startswith("/")
        for s in a.sources:
            assert s.url.startswith("https://")
    assert assets.get_asset("alexnet").local_names() == [
        "backbones/alexnet_features.safetensors", "backbones/alexnet-owt-7be5be79.pth"
    ]
    assert assets.get_asset("vgg19_caffe").sources == ()


def test_unknown_asset_did_you_mean():
    with pytest.raises(AssetError, match="Did you mean 'niqe_params'"):
        asset_path("niqe_param")


def test_shared_hashes_match(assets_dir, monkeypatch):
    monkeypatch.setenv("PERCEPTSR_ASSETS", str(assets_dir))
    for a in list_assets():
        path = assets.find_local(a.name)
        if path is None:
            continue
        assert assets.verify_file(a, path) is not False, a.name
        assert path.is_relative_to(assets_dir)


def test_env_dir_resolution(assets_dir, monkeypatch):
    monkeypatch.setenv("PERCEPTSR_ASSETS", str(assets_dir))
    assert asset_path("niqe_params", download=False) == assets_dir / "niqe/modelparameters.mat"


def test_explicit_path(tmp_path):
    f = tmp_path / "my.mat"
    f.write_bytes(b"x")
    assert asset_path("niqe_params", f) == f
    with pytest.raises(AssetError, match="does not exist"):
        asset_path("niqe_params", tmp_path / "missing.mat")


def test_cache_then_missing_message(isolated):
    with pytest.raises(AssetError) as info:
        asset_path("niqe_params", download=False)
    msg = str(info.value)
    assert "niqe_params" in msg and "niqe_modelparameters.mat" in msg
    assert str(isolated / "cache" / "niqe" / "modelparameters.mat") in msg
    target = isolated / "cache" / "niqe" / "modelparameters.mat"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"cached")
    assert asset_path("niqe_params", download=False) == target


def test_local_only_asset_message(isolated):
    with pytest.raises(AssetError, match="no online download.*Oxford"):
        asset_path("vgg19_caffe")


def test_offline_env_blocks_download(isolated, monkeypatch):
    src = isolated / "src.bin"
    src.write_bytes(b"payload")
    _fake_asset(monkeypatch, src.as_uri(), hashlib.sha256(b"payload").hexdigest())
    monkeypatch.setenv("PERCEPTSR_OFFLINE", "1")
    with pytest.raises(AssetError, match="PERCEPTSR_OFFLINE"):
        asset_path("fake")


def test_download_file_url(isolated, monkeypatch):
    src = isolated / "src.bin"
    src.write_bytes(b"payload" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    _fake_asset(monkeypatch, src.as_uri(), digest)
    got = asset_path("fake")
    assert got == isolated / "cache" / "fake" / "data.bin"
    assert got.read_bytes() == src.read_bytes()
    assert fetch_asset("fake") == got
    assert not list(got.parent.glob("*.part"))


def test_download_other_format_with_prefix_hash(isolated, monkeypatch):
    src = isolated / "weights.pth"
    src.write_bytes(b"torchvision-like")
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    _fake_asset(monkeypatch, src.as_uri(), prefix, filename=f"weights-{prefix}.pth")
    got = asset_path("fake")
    assert got.name == f"weights-{prefix}.pth"
    # found again without downloading
    assert assets.find_local("fake") == got


def test_download_hash_mismatch_deletes(isolated, monkeypatch):
    src = isolated / "src.bin"
    src.write_bytes(b"payload")
    _fake_asset(monkeypatch, src.as_uri(), "0" * 64)
    with pytest.raises(AssetError, match="sha256 mismatch"):
        asset_path("fake")
    folder = isolated / "cache" / "fake"
    assert not any(folder.iterdir()) if folder.exists() else True


def test_cli_list_and_verify(assets_dir, monkeypatch, capsys):
    import argparse

    from perceptsr.cli import assets as cli

    monkeypatch.setenv("PERCEPTSR_ASSETS", str(assets_dir))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["list"])) == 0
    out = capsys.readouterr().out
    assert "niqe_params" in out and "ma_model" in out
    assert cli.run(parser.parse_args(["verify"])) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "missing" in out  # ma_model is never in the shared folder


def test_cli_fetch_offline(isolated, monkeypatch, capsys):
    import argparse

    from perceptsr.cli import assets as cli

    monkeypatch.setenv("PERCEPTSR_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["fetch", "lpips_alex"])) == 1
    assert "lpips_alex" in capsys.readouterr().err


def test_no_network_in_paths():
    # Sanity: the module never opens URLs at import or in lookups.
    assert Path(assets.__file__).read_text().count("urlopen(") == 1
