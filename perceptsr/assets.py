"""Asset registry (weights and parameter files) and their resolution.

Each asset has one canonical relative path in the asset layout (the layout of ``../shared/assets``),
the sha256 of that file, and the official download(s). Where the official download is a different
file than the local layout (torchvision's whole-model ``.pth`` versus our ``*_features.safetensors``),
the source records its own file name and hash, and :func:`asset_path` returns whichever of the two
files exists; consumers pick the loader by suffix (``.safetensors`` or ``.pth``/``.pt``).

Resolution order of :func:`asset_path`:

1. an explicit ``path`` (it must exist, else :class:`AssetError` naming it);
2. ``$PERCEPTSR_ASSETS/<relpath>`` (or a source's file name in the same folder);
3. the user cache, ``$PERCEPTSR_CACHE`` or ``~/.cache/perceptsr``, same layout;
4. a download into the cache (tqdm progress, sha256 check, temp file then rename);
5. otherwise :class:`AssetError` naming the asset, its URL(s) and the folder to put it in.

Set ``PERCEPTSR_OFFLINE=1`` to forbid step 4 everywhere (tests never download).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from perceptsr.errors import AssetError

__all__ = [
    "Asset",
    "AssetSource",
    "ASSETS",
    "asset_path",
    "asset_dirs",
    "cache_dir",
    "fetch_asset",
    "find_local",
    "get_asset",
    "list_assets",
    "sha256_file",
    "verify_file",
]


@dataclasses.dataclass(frozen=True)
class AssetSource:
    """One download of an asset.

    ``filename`` is the name the downloaded file gets (in the folder of the asset's ``relpath``);
    ``None`` means the download *is* the local-layout file. ``sha256`` is the full hex digest or a
    prefix of it (torchvision file names carry an 8+ hex-digit prefix); ``None`` means no hash is
    known and the download is kept unverified. ``verified`` says whether the URL itself was
    confirmed against the publisher's code or documentation.
    """

    url: str
    filename: str | None = None
    sha256: str | None = None
    verified: bool = False
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Asset:
    """A registry entry: canonical local file, its hash, and where the original comes from."""

    name: str
    relpath: str
    sha256: str | None
    description: str
    sources: tuple[AssetSource, ...] = ()
    origin: str = ""  # where the original comes from when there is no direct download

    def local_names(self) -> list[str]:
        """Relative paths under an asset folder that satisfy this asset, preferred first."""
        names = [self.relpath]
        folder = os.path.dirname(self.relpath)
        for src in self.sources:
            if src.filename:
                rel = f"{folder}/{src.filename}" if folder else src.filename
                if rel not in names:
                    names.append(rel)
        return names

    def expected_hash(self, relname: str) -> str | None:
        """Expected sha256 (or prefix) of the file stored at ``relname``."""
        if relname == self.relpath:
            return self.sha256
        for src in self.sources:
            if src.filename and (relname == src.filename or relname.endswith("/" + src.filename)):
                return src.sha256
        return None


_TV = "https://download.pytorch.org/models/"
_LPIPS = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"
_PYIQA = "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"

# sha256 of the local-layout files were computed from ../shared/assets. URL checks:
# - pyiqa's niqe_modelparameters.mat: the URL is in pyiqa's niqe_arch.py; a third-party manifest
#   lists its sha256 prefix fa2aa4d12dd9595c, the same as our modelparameters.mat.
# - LPIPS weights: the URLs are used by many ports; a third-party script lists the alex.pth
#   sha256 df73285e..., the same as ours.
# - torchvision URLs are torchvision's model_urls; the file name prefix is the sha256 prefix.
# - DISTS: the file is DISTS_pytorch/weights.pt in dingkeyan93/DISTS (setup.py package_data);
#   pyiqa's mirror name carries the prefix f5e65c96, the same as our weights.pt.
_REGISTRY: tuple[Asset, ...] = (
    Asset(
        name="niqe_params",
        relpath="niqe/modelparameters.mat",
        sha256="fa2aa4d12dd9595c3fb6bf8b4e1a15c79d5d1469238d0901c88dead195be578d",
        description="LIVE NIQE release pristine model (mu_prisparam 1x36, cov_prisparam 36x36)",
        sources=(
            AssetSource(_PYIQA + "niqe_modelparameters.mat", filename=None,
                        sha256="fa2aa4d12dd9595c3fb6bf8b4e1a15c79d5d1469238d0901c88dead195be578d",
                        verified=True, note="pyiqa mirror of the LIVE file (same bytes)"),
            # Unverified branch name; the file ships there per the RankSRGAN release.
            AssetSource("https://github.com/XPixelGroup/RankSRGAN/raw/master/codes/utils/"
                        "perceptualmetric/modelparameters.mat", filename=None,
                        sha256="fa2aa4d12dd9595c3fb6bf8b4e1a15c79d5d1469238d0901c88dead195be578d",
                        verified=False, note="RankSRGAN repository copy"),
        ),
        origin="LIVE NIQE release, http://live.ece.utexas.edu/research/quality/niqe_release.zip "
        "(modelparameters.mat inside the zip)",
    ),
    Asset(
        name="niqe_params_npz",
        relpath="niqe/niqe_pris_params.npz",
        sha256="2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
        description="the same NIQE numbers as BasicSR's npz (mu_pris_param, cov_pris_param, "
        "gaussian_window)",
        sources=(
            # URL verified (BasicSR path); byte identity with our file is not verified.
            AssetSource("https://raw.githubusercontent.com/XPixelGroup/BasicSR/master/basicsr/"
                        "metrics/niqe_pris_params.npz", filename=None,
                        sha256="2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
                        verified=True, note="BasicSR; byte identity with the local copy unverified"),
        ),
    ),
    *(
        Asset(
            name=f"lpips_{net}",
            relpath=f"lpips/v0.1/{net}.pth",
            sha256=digest,
            description=f"LPIPS v0.1 linear layers for the {net} backbone (BSD-2)",
            sources=(AssetSource(_LPIPS + f"{net}.pth", sha256=digest, verified=True),),
        )
        for net, digest in (
            ("alex", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
            ("vgg", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
            ("squeeze", "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76"),
        )
    ),
    Asset(
        name="alexnet",
        relpath="backbones/alexnet_features.safetensors",
        sha256="b6ff2ce0a625b9f426dda574eeb6b6ebdda43dc39488fbcb7e9008ec399fd9cc",
        description="torchvision AlexNet ImageNet weights, features.{0,3,6,8,10} (float32)",
        sources=(
            AssetSource(_TV + "alexnet-owt-7be5be79.pth", filename="alexnet-owt-7be5be79.pth",
                        sha256="7be5be79", verified=True,
                        note="whole-model state dict; load the features.* keys"),
        ),
    ),
    Asset(
        name="vgg16",
        relpath="backbones/vgg16_features.safetensors",
        sha256="90b672888fc7446743ad352bfef3d29a365e5fda4469a21cbf505c2710569ecc",
        description="torchvision VGG16 ImageNet weights, features.N.* (13 convs, float32)",
        sources=(
            AssetSource(_TV + "vgg16-397923af.pth", filename="vgg16-397923af.pth",
                        sha256="397923af", verified=True,
                        note="whole-model state dict; load the features.* keys"),
        ),
    ),
    Asset(
        name="vgg19_caffe",
        relpath="backbones/vgg19_caffe_features.safetensors",
        sha256="8aac3bd9356cf7575361214e8ce979ea1e169c0140769f0315ce0c0f2b506f9f",
        description="VGG19 conv1_1..conv5_4 (Oxford/Caffe weights, float16) at torchvision indices; "
        "input BGR 0..255 minus (103.939, 116.779, 123.68), no std division",
        origin="Oxford VGG 'Very Deep' VGG_ILSVRC_19_layers.caffemodel (CC BY 4.0), "
        "https://www.robots.ox.ac.uk/~vgg/research/very_deep/ ; converted to this layout offline. "
        "No download: online users use asset 'vgg19' (torchvision, RGB [0,1], ImageNet mean/std)",
    ),
    Asset(
        name="vgg19",
        relpath="backbones/vgg19-dcbb9e9d.pth",
        sha256="dcbb9e9d",
        description="torchvision VGG19 ImageNet weights (whole-model state dict; RGB [0,1], "
        "ImageNet mean/std)",
        sources=(AssetSource(_TV + "vgg19-dcbb9e9d.pth", sha256="dcbb9e9d", verified=True),),
    ),
    Asset(
        name="dists",
        relpath="dists/weights.pt",
        sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
        description="DISTS alpha, beta (1x1475 each), MIT",
        sources=(
            AssetSource("https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt",
                        sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
                        verified=True, note="dists-pytorch repository"),
            # Mirror name seen in third-party code; URL itself unverified.
            AssetSource(_PYIQA + "DISTS_weights-f5e65c96.pth",
                        sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
                        verified=False, note="pyiqa mirror"),
        ),
    ),
    Asset(
        name="ma_model",
        relpath="ma/model.mat",
        sha256=None,
        description="Ma et al. 2017 (NRQM) random forests + linear stage, randomforest-matlab "
        "layout (model.rf{1..3}, model.linear)",
        sources=(
            # quality_predict.m in chaoma99/sr-metric does `load model.mat` from the repository
            # root; the exact raw URL (branch name) is unverified and no hash is known.
            AssetSource("https://github.com/chaoma99/sr-metric/raw/master/model.mat",
                        verified=False, note="official sr-metric repository (unverified URL)"),
            # pyiqa's copy of the same struct (loaded as model.rf / model.linear in nrqm_arch.py).
            AssetSource(_PYIQA + "NRQM_model.mat", verified=True,
                        note="pyiqa mirror, same struct layout"),
        ),
        origin="https://github.com/chaoma99/sr-metric (model.mat); not available offline",
    ),
)

ASSETS: dict[str, Asset] = {a.name: a for a in _REGISTRY}


def list_assets() -> list[Asset]:
    """All registered assets, sorted by name."""
    return [ASSETS[k] for k in sorted(ASSETS)]


def get_asset(name: str) -> Asset:
    """The registry entry called ``name``; unknown names raise :class:`AssetError` with a hint."""
    try:
        return ASSETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(ASSETS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise AssetError(
            f"unknown asset {name!r}.{hint} Known assets: {', '.join(sorted(ASSETS))}"
        ) from None


def cache_dir() -> Path:
    """The user cache: ``$PERCEPTSR_CACHE`` or ``~/.cache/perceptsr``."""
    env = os.environ.get("PERCEPTSR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "perceptsr"


def asset_dirs() -> list[Path]:
    """Folders searched for assets, in order: ``$PERCEPTSR_ASSETS`` (if set), then the cache."""
    dirs = []
    env = os.environ.get("PERCEPTSR_ASSETS")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(cache_dir())
    return dirs


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _hash_ok(digest: str, expected: str | None) -> bool:
    return expected is None or digest.startswith(expected.lower())


def verify_file(asset: Asset | str, path: str | os.PathLike) -> bool | None:
    """Check ``path`` against the hash recorded for it; ``None`` when no hash is known."""
    asset = get_asset(asset) if isinstance(asset, str) else asset
    path = Path(path)
    expected = None
    for rel in asset.local_names():
        if path.as_posix().endswith(rel) or path.name == os.path.basename(rel):
            expected = asset.expected_hash(rel)
            break
    if expected is None:
        return None
    return sha256_file(path).startswith(expected.lower())


def find_local(name: str) -> Path | None:
    """The first existing file for asset ``name`` in :func:`asset_dirs`, or ``None``."""
    asset = get_asset(name)
    for folder in asset_dirs():
        for rel in asset.local_names():
            candidate = folder / rel
            if candidate.is_file():
                return candidate
    return None


def _offline() -> bool:
    return os.environ.get("PERCEPTSR_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download(url: str, dest: Path, expected: str | None, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically; a hash mismatch deletes the temp file and raises."""
    created = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "perceptsr"})
            with urllib.request.urlopen(request, timeout=60) as resp:
                total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
                total = int(total) if total and str(total).isdigit() else None
                bar = None
                if progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                               desc=f"download {dest.name}", leave=False)
                try:
                    while True:
                        block = resp.read(1 << 16)
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        if bar is not None:
                            bar.update(len(block))
                finally:
                    if bar is not None:
                        bar.close()
        digest = h.hexdigest()
        if not _hash_ok(digest, expected):
            raise AssetError(
                f"sha256 mismatch for {url}: got {digest}, expected {expected}"
                f"{'...' if expected and len(expected) < 64 else ''}; the download was deleted"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if created:
            try:
                dest.parent.rmdir()  # leave no empty folder behind a failed first download
            except OSError:
                pass
        raise
    return dest


def _missing_message(asset: Asset, errors: list[str]) -> str:
    lines = [f"asset {asset.name!r} ({asset.description}) is not available."]
    folders = asset_dirs()
    lines.append(
        "Looked for " + ", ".join(str(d / r) for d in folders for r in asset.local_names()) + "."
    )
    if asset.sources:
        lines.append("Download it from: " + " or ".join(s.url for s in asset.sources))
        lines.append(
            f"and put it at {folders[-1] / asset.relpath}"
            + (
                " (or keep the downloaded name: "
                + ", ".join(str(folders[-1] / r) for r in asset.local_names()[1:])
                + ")"
                if len(asset.local_names()) > 1
                else ""
            )
            + ", or set PERCEPTSR_ASSETS to a folder with that layout."
        )
    else:
        lines.append(f"There is no online download. Origin: {asset.origin or 'unknown'}.")
        lines.append(
            f"Put the file at {folders[-1] / asset.relpath} or set PERCEPTSR_ASSETS to a folder "
            "that holds it."
        )
    if errors:
        lines.append("Download attempts: " + "; ".join(errors))
    return " ".join(lines)


def asset_path(
    name: str, path: str | os.PathLike | None = None, *, download: bool = True
) -> Path:
    """Return a local file for asset ``name`` (see the module docstring for the order).

    The returned file may be the local-layout file or a source's downloaded file (e.g. the
    torchvision ``.pth``); load by suffix.
    """
    asset = get_asset(name)
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise AssetError(f"asset {name!r}: the given path {explicit} does not exist")
        return explicit
    found = find_local(name)
    if found is not None:
        return found
    errors: list[str] = []
    if download and not _offline() and asset.sources:
        return _download_any(asset, errors)
    if download and _offline() and asset.sources:
        errors.append("downloads are disabled (PERCEPTSR_OFFLINE is set)")
    raise AssetError(_missing_message(asset, errors))


def _download_any(asset: Asset, errors: list[str]) -> Path:
    folder = cache_dir()
    for src in asset.sources:
        rel = asset.relpath
        if src.filename:
            parent = os.path.dirname(asset.relpath)
            rel = f"{parent}/{src.filename}" if parent else src.filename
        try:
            return _download(src.url, folder / rel, src.sha256)
        except AssetError as exc:
            errors.append(str(exc))
        except OSError as exc:  # URLError, HTTPError, timeouts
            errors.append(f"{src.url}: {exc}")
    raise AssetError(_missing_message(asset, errors))


def fetch_asset(name: str) -> Path:
    """Make asset ``name`` available locally (downloading if needed) and verify its hash."""
    path = asset_path(name, download=True)
    ok = verify_file(name, path)
    if ok is False:
        raise AssetError(
            f"asset {name!r}: {path} does not match its recorded sha256; delete it and fetch again"
        )
    return path
