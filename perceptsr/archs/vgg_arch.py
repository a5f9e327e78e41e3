"""AlexNet / VGG16 / VGG19 feature backbones with torchvision parameter names, and a feature extractor.

The backbones hold an ``nn.Sequential`` named ``features`` whose layer indices match torchvision's
``models.alexnet().features`` / ``models.vgg16().features`` / ``models.vgg19().features``, so their
state dicts use the same keys (``features.N.weight`` / ``features.N.bias``). Weights load from our
safetensors files (``features.*`` keys, float32 or float16) or from a torchvision whole-model ``.pth``
(only ``features.*`` is kept), always strictly. torchvision itself is not needed.

Input conventions (:func:`normalize_input`):

* ``"torchvision"``: RGB in [0, 1], minus ImageNet mean, divided by ImageNet std.
* ``"caffe"``: RGB in [0, 1] is turned into BGR in [0, 255] minus (103.939, 116.779, 123.68) for
  (B, G, R), no std division: the original Oxford/Caffe VGG convention (asset ``vgg19_caffe``).
* ``"lpips"``: input already in [-1, 1]; LPIPS's ScalingLayer ``(x - shift) / scale``.
* ``"none"``: unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from perceptsr.errors import AssetError, CheckpointError
from perceptsr.state_dicts import key_report

__all__ = [
    "ARCHS",
    "CONVENTIONS",
    "FeatureBackbone",
    "FeatureExtractor",
    "VGGFeatureExtractor",
    "build_backbone",
    "layer_names",
    "load_backbone_weights",
    "normalize_input",
    "read_backbone_state_dict",
    "resolve_weights_path",
]

# torchvision configurations ("M" = 2x2 max pooling).
_VGG_CFGS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
ARCHS = ("alexnet", "vgg16", "vgg19")
CONVENTIONS = ("torchvision", "caffe", "lpips", "none")

# The default weight asset of each architecture (perceptsr.assets names).
_DEFAULT_ASSET = {"alexnet": "alexnet", "vgg16": "vgg16", "vgg19": "vgg19"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    return arch


def _alexnet_layers() -> tuple[list[nn.Module], list[str]]:
    mods: list[nn.Module] = [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]
    names = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
             "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5"]
    return mods, names


def _vgg_layers(arch: str) -> tuple[list[nn.Module], list[str]]:
    mods: list[nn.Module] = []
    names: list[str] = []
    in_ch, block, idx = 3, 1, 1
    for v in _VGG_CFGS[arch]:
        if v == "M":
            mods.append(nn.MaxPool2d(kernel_size=2, stride=2))
            names.append(f"pool{block}")
            block, idx = block + 1, 1
        else:
            # ReLU is not in-place so that a stored pre-activation (convX_Y) stays intact.
            mods += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU()]
            names += [f"conv{block}_{idx}", f"relu{block}_{idx}"]
            in_ch, idx = int(v), idx + 1
    return mods, names


def _layers(arch: str) -> tuple[list[nn.Module], list[str]]:
    _check_arch(arch)
    return _alexnet_layers() if arch == "alexnet" else _vgg_layers(arch)


def layer_names(arch: str) -> list[str]:
    """Names of ``features[i]`` in order, e.g. ``['conv1_1', 'relu1_1', 'conv1_2', ...]`` for VGG."""
    return _layers(arch)[1]


class FeatureBackbone(nn.Module):
    """``features`` of torchvision's AlexNet / VGG16 / VGG19 (no BN); ``layer_names[i]`` names ``features[i]``."""

    def __init__(self, arch: str = "vgg19", generator: torch.Generator | None = None) -> None:
        super().__init__()
        mods, names = _layers(arch)
        self.arch = arch
        self.layer_names = names
        self.features = nn.Sequential(*mods)
        for m in self.features:
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init (deterministic given a generator)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------- weight files

def resolve_weights_path(weights: str | Path) -> Path:
    """An existing file path as given, otherwise a :mod:`perceptsr.assets` name resolved to its file."""
    p = Path(weights)
    if p.is_file():
        return p
    if isinstance(weights, str) and "/" not in weights and "\\" not in weights and not p.suffix:
        from perceptsr.assets import asset_path  # lazy: assets may download

        return Path(asset_path(weights))
    raise AssetError(f"weight file {str(weights)!r} does not exist")


def _unwrap(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    for key in ("state_dict", "model", "params"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and not any(str(k).startswith("features.") for k in obj):
            return _unwrap(inner, path)
    return obj


def read_backbone_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the ``features.*`` tensors of a backbone file as float32 on the CPU.

    Accepts ``.safetensors`` (our assets: ``features.N.*`` keys, float32 or float16) and torchvision
    whole-model ``.pth``/``.pt`` state dicts (``features.*`` kept, ``classifier.*`` dropped; a
    ``module.`` prefix is stripped). Pickled code is never executed (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"backbone weight file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Mapping[str, torch.Tensor] = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            raw = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
        else:
            raise CheckpointError(f"{path}: unsupported backbone file type {suffix!r} (.safetensors or .pth)")
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, unpickling refused, ...
        raise CheckpointError(f"{path}: cannot read backbone weights ({exc})") from exc
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = str(key)
        if key.startswith("module."):
            key = key[len("module."):]
        if not key.startswith("features."):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a tensor")
        out[key] = value.float() if value.is_floating_point() else value
    if not out:
        sample = ", ".join(sorted(str(k) for k in raw)[:8]) or "(empty)"
        raise CheckpointError(f"{path}: no 'features.*' keys found; keys start with: {sample}")
    return out


def load_backbone_weights(
    backbone: FeatureBackbone, state_dict: Mapping[str, torch.Tensor], source: str = "state dict"
) -> None:
    """Load ``features.*`` tensors strictly; on any mismatch raise ``CheckpointError`` naming every key."""
    expected = backbone.state_dict()
    report = key_report(expected, state_dict, what=f"{source} does not match the {backbone.arch} features backbone",
                        labels=("model", "file"), limit=None)
    if report:
        raise CheckpointError(report)
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state_dict[k].to(v.dtype))


def build_backbone(
    arch: str = "vgg19",
    weights: str | Path | None = "default",
    generator: torch.Generator | None = None,
) -> FeatureBackbone:
    """A backbone with weights from an asset name or file path; ``"default"`` is the arch's torchvision
    asset (``alexnet``/``vgg16``/``vgg19``); ``None`` keeps a (seedable) random initialisation."""
    net = FeatureBackbone(arch, generator=generator)
    if weights is None:
        return net
    if isinstance(weights, str) and weights == "default":
        weights = _DEFAULT_ASSET[arch]
    path = resolve_weights_path(weights)
    load_backbone_weights(net, read_backbone_state_dict(path), source=str(path))
    return net


# --------------------------------------------------------------------------- extractor

def _channel_vector(values: Iterable[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(tuple(values), dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalize_input(x: torch.Tensor, convention: str) -> torch.Tensor:
    """Map an ``(N, 3, H, W)`` batch to the input convention of the backbone weights (module docstring)."""
    if convention == "none":
        return x
    if convention == "torchvision":
        return (x - _channel_vector(IMAGENET_MEAN, x)) / _channel_vector(IMAGENET_STD, x)
    if convention == "caffe":
        return x.flip(1) * 255.0 - _channel_vector(CAFFE_MEAN_BGR, x)
    if convention == "lpips":
        return (x - _channel_vector(LPIPS_SHIFT, x)) / _channel_vector(LPIPS_SCALE, x)
    raise ValueError(f"unknown input convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")


class FeatureExtractor(nn.Module):
    """Return ``{layer_name: activation}`` of a backbone at the requested layers.

    ``convX_Y`` names give pre-activation features, ``reluX_Y`` post-activation ones (VGG); AlexNet uses
    ``conv1..5`` / ``relu1..5``. With ``truncate`` the layers after the last requested one are dropped.
    With ``requires_grad=False`` (default) the backbone is frozen and kept in eval mode; gradients
    still flow to the input.
    """

    def __init__(
        self,
        layers: Iterable[str],
        arch: str = "vgg19",
        weights: str | Path | None = "default",
        convention: str = "torchvision",
        truncate: bool = True,
        requires_grad: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.layers = list(dict.fromkeys(layers))
        if not self.layers:
            raise ValueError("FeatureExtractor needs at least one layer name")
        names = layer_names(arch)
        unknown = [n for n in self.layers if n not in names]
        if unknown:
            raise ValueError(f"unknown {arch} layer(s) {unknown}; available: {', '.join(names)}")
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown input convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
        self.arch = arch
        self.convention = convention
        backbone = build_backbone(arch, weights, generator=generator)
        last = max(names.index(n) for n in self.layers)
        keep = last + 1 if truncate else len(names)
        # Keep torchvision indices as child names so state_dict keys stay ``features.N.*``.
        self.features = nn.Sequential(*list(backbone.features)[:keep])
        self.layer_names = names[:keep]
        self.requires_grad = requires_grad
        if not requires_grad:
            self.features.requires_grad_(False)
            self.features.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        super().train(mode)
        if not self.requires_grad:
            self.features.eval()  # a frozen backbone always stays in eval mode
        return self

    def forward(self, x: torch.Tensor, normalize: bool = True) -> dict[str, torch.Tensor]:
        """``x`` follows the convention's input range (``[0, 1]``; ``[-1, 1]`` for ``lpips``)."""
        h = normalize_input(x, self.convention) if normalize else x
        wanted = set(self.layers)
        out: dict[str, torch.Tensor] = {}
        for name, module in zip(self.layer_names, self.features):
            h = module(h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out


VGGFeatureExtractor = FeatureExtractor
