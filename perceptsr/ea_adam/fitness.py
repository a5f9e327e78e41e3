"""EA-Adam's fitness: the fixed evaluation patch set and the no-gradient evaluator.

- :class:`EvalSet`, :func:`build_eval_set`: the release's fitness patches, made deterministic;
- :class:`FitnessTerm` and its kinds (:class:`L1Fitness`, :class:`PerceptualFitness` with cached HR
  features, :class:`MetricFitness` for any perceptsr metric, :class:`FunctionFitness`): one
  objective of the multi-objective fitness each, minimised, one value per patch;
- :class:`FitnessEvaluator`: scores generators (or state dicts in one scratch model) on the set
  under ``torch.inference_mode``, optionally split over ``torch.distributed`` ranks.

Speed (``benchmarks/ea_step.py``): a child costs one generator and one VGG forward pass per patch,
against the release's generator + two VGG passes with autograd on (about 1.7x our float32 work; the
convolutions here run near the CPU's peak rate). Convolutions run in channels_last (same values up
to float32 summation order), the HR-side cache may live on the CPU (``cache_device``), and
``dtype=torch.bfloat16`` is an opt-in autocast fitness (about twice as fast where bf16 convolutions
are native; values move by a few 1e-3, so selection can differ). Several children per forward pass
(``torch.func`` over stacked weights) measured slower on CPU (grouped convolutions), and the
steady-state MOEA/D phase cannot batch children anyway (the next child depends on the last
replacement), so children are scored one after another.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from perceptsr.distributed import current
from perceptsr.errors import ConfigError

__all__ = [
    "EvalSet",
    "grid_patches",
    "build_eval_set",
    "FitnessTerm",
    "L1Fitness",
    "PerceptualFitness",
    "MetricFitness",
    "FunctionFitness",
    "FitnessLike",
    "as_fitness_term",
    "FitnessEvaluator",
]


@dataclasses.dataclass
class EvalSet:
    """A fixed EA evaluation set: LR/HR patch stacks and the source image of every patch."""

    lr: torch.Tensor  # (P, C, h, w)
    hr: torch.Tensor  # (P, C, H, W)
    image_index: torch.Tensor  # (P,) int64, 0..num_images-1
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.lr.ndim != 4 or self.hr.ndim != 4 or len(self.lr) != len(self.hr) or len(self.lr) == 0:
            raise ValueError(
                f"EvalSet: lr and hr must be non-empty (P, C, H, W) stacks of equal length, got "
                f"{tuple(self.lr.shape)} and {tuple(self.hr.shape)}"
            )
        self.image_index = torch.as_tensor(self.image_index, dtype=torch.int64).reshape(-1)
        if len(self.image_index) != len(self.lr):
            raise ValueError(f"EvalSet: {len(self.image_index)} image indices for {len(self.lr)} patches")
        if not self.names:
            self.names = tuple(str(j) for j in range(int(self.image_index.max()) + 1))
        counts = torch.bincount(self.image_index, minlength=len(self.names))
        if len(counts) != len(self.names) or bool((counts == 0).any()) or int(self.image_index.min()) < 0:
            raise ValueError(
                f"EvalSet: image_index must cover images 0..{len(self.names) - 1}, each with at least one patch"
            )

    @property
    def num_patches(self) -> int:
        return len(self.lr)

    @property
    def num_images(self) -> int:
        return len(self.names)

    def to(self, device: torch.device | str) -> EvalSet:
        return EvalSet(self.lr.to(device), self.hr.to(device), self.image_index, self.names)


def grid_patches(img: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping ``size``² patches of a ``(C, H, W)`` image in raster order (row by row),
    ``(rows * cols, C, size, size)``; the right/bottom remainder is dropped."""
    c = img.shape[0]
    tiles = img.unfold(1, size, size).unfold(2, size, size)  # (C, rows, cols, s, s)
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, c, size, size)


def _chw(img) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float()


def build_eval_set(
    hr_dir: str | Path,
    lr_dir: str | Path | None = None,
    *,
    scale: int = 4,
    patch_size: int = 128,
    num_images: int = 16,
    max_patches: int = 100,
    keep: tuple[int, int] = (25, 75),
    quantize_lr: bool = True,
) -> EvalSet:
    """The EA fitness set of the release, made deterministic.

    The first ``num_images`` files of ``hr_dir`` in sorted order (the release took ``os.listdir``
    order); each is cut into non-overlapping ``patch_size``² HR patches in raster order and, when an
    image gives more than ``max_patches``, only patches ``keep[0]..keep[1]-1`` are kept (#25–#74).
    LR patches come from the matching file of ``lr_dir`` (paired by stem, ``x4`` suffix allowed) cut on
    the ``patch_size / scale`` grid, or else from MATLAB bicubic downscaling of the (modcropped) HR
    image, rounded to uint8 like a saved LR file unless ``quantize_lr=False``. Images smaller than one
    patch are skipped.
    """
    from perceptsr.data import imresize, list_images, modcrop, pair_files, read_image, to_uint8

    if patch_size % scale:
        raise ConfigError(f"build_eval_set: patch_size {patch_size} is not a multiple of scale {scale}")
    if lr_dir is not None:
        pairs: list[tuple[Path, Path | None]] = list(pair_files(hr_dir, lr_dir, scale))
    else:
        pairs = [(p, None) for p in list_images(hr_dir)]
    if not pairs:
        raise ConfigError(f"build_eval_set: no images in {hr_dir}")
    lp = patch_size // scale
    lrs, hrs, idx, names = [], [], [], []
    for hr_path, lr_path in pairs[:num_images]:
        hr_img = read_image(hr_path)
        if lr_path is not None:
            lr_img = read_image(lr_path)
        else:
            hr_u8 = to_uint8(modcrop(hr_img, scale))
            if quantize_lr:
                lr_img = imresize(hr_u8, 1 / scale).astype("float32") / 255
            else:
                lr_img = imresize(hr_u8.astype("float64") / 255, 1 / scale).astype("float32")
        hp = grid_patches(_chw(hr_img), patch_size)
        lq = grid_patches(_chw(lr_img), lp)
        if len(hp) != len(lq):
            raise ConfigError(
                f"build_eval_set: {hr_path.name} gives {len(hp)} HR patches but its LR "
                f"{lr_path.name if lr_path else ''} gives {len(lq)} (is the LR x{scale} of this HR?)"
            )
        if len(hp) == 0:
            continue
        if len(hp) > max_patches:
            hp, lq = hp[keep[0]:keep[1]], lq[keep[0]:keep[1]]
        idx.append(torch.full((len(hp),), len(names), dtype=torch.int64))
        names.append(hr_path.stem)
        hrs.append(hp)
        lrs.append(lq)
    if not names:
        raise ConfigError(f"build_eval_set: no image in {hr_dir} is at least {patch_size}x{patch_size}")
    return EvalSet(torch.cat(lrs), torch.cat(hrs), torch.cat(idx), tuple(names))


class FitnessTerm(nn.Module):
    """One objective of the EA's fitness, minimised: ``forward(sr, hr, cache) -> (N,)`` per-patch values.

    :meth:`prepare_hr` computes whatever depends on the HR patches only (e.g. VGG features); the
    evaluator calls it once per batch of the fixed set and passes the result back as ``cache``.
    """

    name: str = "objective"

    def prepare_hr(self, hr: torch.Tensor) -> Any:
        return None

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class L1Fitness(FitnessTerm):
    """Mean absolute error per patch (the release's ``nn.L1Loss`` on [0, 1] images)."""

    name = "l1"

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        return (sr - hr).abs().flatten(1).mean(1)


class PerceptualFitness(FitnessTerm):
    """VGG feature distance per patch with the target's features cached: the same number as
    :class:`~perceptsr.losses.PerceptualLoss` (criterion ``l1`` or ``l2``) applied patch by patch.

    Pass a ``PerceptualLoss`` instance or the keyword arguments to build one (default: VGG19
    ``conv5_4`` before ReLU, L1, torchvision weights, as the released SRResNet run).
    """

    name = "perceptual"

    def __init__(self, loss: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__()
        if loss is None:
            from perceptsr.losses import PerceptualLoss

            loss = PerceptualLoss(**kwargs)
        elif kwargs:
            raise ConfigError("PerceptualFitness: pass either a loss module or its keyword arguments")
        if loss.criterion not in ("l1", "l2"):
            raise ConfigError(
                f"PerceptualFitness: criterion {loss.criterion!r} has no per-patch form; use 'l1' or 'l2'"
            )
        self.loss = loss

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.loss.range_norm:
            x = (x + 1) / 2
        return self.loss.vgg(x)

    def prepare_hr(self, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._features(hr)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        hr_feats = cache if cache is not None else self.prepare_hr(hr)
        feats = self._features(sr)
        total = sr.new_zeros(len(sr))
        for layer, weight in self.loss.layer_weights.items():
            # float32 differences, also when the features come from a bf16 autocast
            d = feats[layer].float() - hr_feats[layer].to(feats[layer].device).float()
            d = d.abs() if self.loss.criterion == "l1" else d.pow(2)
            total = total + weight * d.flatten(1).mean(1)
        return total * self.loss.loss_weight


class MetricFitness(FitnessTerm):
    """A perceptsr metric (``create_metric(name)``: ``.full_reference``, ``.lower_better``,
    ``forward(x, ref=None) -> (N,)``) as an objective. Higher-is-better metrics are negated so that
    everything is minimised; SR outputs are clamped to [0, 1] first, as metrics require."""

    def __init__(self, metric: nn.Module, name: str | None = None) -> None:
        super().__init__()
        for attr in ("full_reference", "lower_better"):
            if not hasattr(metric, attr):
                raise ConfigError(f"MetricFitness: {type(metric).__name__} has no {attr!r} attribute")
        self.metric = metric
        self.name = name or str(getattr(metric, "name", type(metric).__name__.lower()))
        self.sign = 1.0 if metric.lower_better else -1.0

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        x = sr.clamp(0, 1)
        out = self.metric(x, ref=hr) if self.metric.full_reference else self.metric(x)
        return self.sign * out.reshape(-1)


class FunctionFitness(FitnessTerm):
    """Wrap a plain callable ``fn(sr, hr, cache) -> (N,)``."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "objective")

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.fn(sr, hr, cache)


FitnessLike = Union[FitnessTerm, nn.Module, str, Callable[..., torch.Tensor]]


def as_fitness_term(obj: FitnessLike) -> FitnessTerm:
    """``"l1"``, ``"perceptual"``, another name (a perceptsr metric), a metric module, a
    :class:`FitnessTerm` or a callable -> :class:`FitnessTerm`."""
    if isinstance(obj, FitnessTerm):
        return obj
    if isinstance(obj, str):
        if obj == "l1":
            return L1Fitness()
        if obj == "perceptual":
            return PerceptualFitness()
        from perceptsr.metrics import create_metric

        return MetricFitness(create_metric(obj), name=obj)
    if isinstance(obj, nn.Module) and hasattr(obj, "lower_better"):
        return MetricFitness(obj)
    if callable(obj):
        return FunctionFitness(obj)
    raise ConfigError(f"not a fitness objective: {obj!r}")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _fitness_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` (or the torch dtype) -> the torch dtype; anything else is an error."""
    value = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if value not in _DTYPES.values():
        raise ConfigError(f"fitness dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return value


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor of a (nested) dict / list / tuple; other leaves as they are."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _split(distributed: bool) -> tuple[int, int]:
    """(rank, world size) to split work over: the process group's when ``distributed``, else (0, 1)."""
    if not distributed:
        return 0, 1
    info = current()
    return info.rank, info.world_size


class FitnessEvaluator:
    """Scores generators on a fixed :class:`EvalSet` without autograd (``torch.inference_mode``).

    Fitness = per objective, the mean over images of the mean over each image's patches (the release's
    one-image-per-batch averaging), as a float64 ``(m,)`` CPU tensor. Patches are run in batches of
    ``batch_size`` regardless of image boundaries. Models are run in eval mode and put back in their
    previous mode.

    * ``channels_last`` (default): the LR patches, the evaluator's own copies of the objectives and
      the scratch model of :meth:`evaluate_state` are in channels_last memory format, so every
      convolution runs in it without per-call weight copies (faster on CPU and GPU; the values equal
      the plain NCHW forward up to float32 summation order, about 1e-7 relative). Models given to
      :meth:`evaluate` keep their layout.
    * HR-side cache: each objective's HR-only data (VGG features) is computed once per batch and kept
      on ``cache_device`` (default: ``device``). ``"cpu"`` keeps it in host memory
      (pinned when evaluating on CUDA) and moves it to ``device`` batch by batch: the RRDB fitness's
      five VGG layers take about 6.1 GiB for 800 patches.
    * ``dtype``: ``"float32"`` (default) or ``"bfloat16"``, an opt-in autocast for the model and the
      objectives (the cache is then bf16 too, half the memory); feature differences and fitness values
      stay float32/float64. About twice as fast where bf16 convolutions are native, but values move by
      a few 1e-3 relative, so selection outcomes can differ from the float32 run.

    Distributed (``distributed=True`` while ``torch.distributed`` is initialised with more than one
    process): :meth:`evaluate` splits the patch batches over the ranks (batch ``b`` on rank
    ``b % world``, all-reduced, so each patch is computed exactly as in one process) and
    :meth:`evaluate_states` splits the state dicts (``all_gather_object``). Every rank must call with
    the same arguments. With world size 1 or no process group both run locally.
    """

    def __init__(
        self,
        eval_set: EvalSet,
        objectives: Sequence[FitnessLike] = ("l1", "perceptual"),
        *,
        batch_size: int = 50,
        device: torch.device | str | None = None,
        cache_device: torch.device | str | None = None,
        dtype: torch.dtype | str = torch.float32,
        channels_last: bool = True,
    ) -> None:
        if not objectives:
            raise ConfigError("FitnessEvaluator: give at least one objective")
        if batch_size < 1:
            raise ConfigError(f"FitnessEvaluator: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else eval_set.lr.device
        self.cache_device = torch.device(cache_device) if cache_device is not None else self.device
        self.dtype = _fitness_dtype(dtype)
        self.channels_last = bool(channels_last)
        self.eval_set = eval_set.to(self.device)
        self._lr = self._layout(self.eval_set.lr)
        self.objectives = [self._own(as_fitness_term(o)) for o in objectives]
        self.names = [o.name for o in self.objectives]
        self.batch_size = int(batch_size)
        p = eval_set.num_patches
        self.batches = [(s, min(s + self.batch_size, p)) for s in range(0, p, self.batch_size)]
        counts = torch.bincount(self.eval_set.image_index, minlength=eval_set.num_images)
        self._image_count = counts.to(torch.float64)
        self._pin = self.cache_device.type == "cpu" and self.device.type == "cuda"
        self._cache: list[list[Any]] | None = None

    @property
    def num_objectives(self) -> int:
        return len(self.objectives)

    def _own(self, term: FitnessTerm) -> FitnessTerm:
        """The evaluator's copy of an objective: on ``device``, eval mode, channels_last weights (a copy,
        so that modules shared with training, e.g. the Adam phase's VGG, keep their layout)."""
        if self.channels_last:
            term = copy.deepcopy(term).to(memory_format=torch.channels_last)
        return term.to(self.device).eval()

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        """An HR-side tensor as the cache keeps it: on ``cache_device``, in the evaluation layout."""
        x = self._layout(x.to(self.cache_device))
        return x.pin_memory() if self._pin else x

    def _fetch(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)  # asynchronous from pinned memory

    @torch.inference_mode()
    def hr_cache(self) -> list[list[Any]]:
        """Per batch, per objective: the cached HR-side data (computed on first use)."""
        if self._cache is None:
            cache = []
            with self._autocast():
                for s, e in self.batches:
                    hr = self.eval_set.hr[s:e]
                    cache.append([_map_tensors(o.prepare_hr(hr), self._store) for o in self.objectives])
            self._cache = cache
        return self._cache

    @torch.inference_mode()
    def patch_values(self, model: nn.Module, batches: Iterable[int] | None = None) -> torch.Tensor:
        """``(P, m)`` float64 per-patch objective values (rows of batches not run stay 0)."""
        cache = self.hr_cache()
        values = torch.zeros(self.eval_set.num_patches, self.num_objectives, dtype=torch.float64, device=self.device)
        was_training = model.training
        model.eval()
        try:
            for b in (range(len(self.batches)) if batches is None else batches):
                s, e = self.batches[b]
                with self._autocast():
                    sr = model(self._lr[s:e]).float()
                    for j, obj in enumerate(self.objectives):
                        v = obj(sr, self.eval_set.hr[s:e], _map_tensors(cache[b][j], self._fetch))
                        if v.shape != (e - s,):
                            raise ValueError(
                                f"objective {obj.name!r} returned shape {tuple(v.shape)}; expected ({e - s},), "
                                "one value per patch"
                            )
                        values[s:e, j] = v.to(torch.float64)
        finally:
            model.train(was_training)
        return values

    def aggregate(self, values: torch.Tensor) -> torch.Tensor:
        """Per-patch ``(P, m)`` -> ``(m,)``: mean over each image's patches, then over images."""
        values = values.detach().to("cpu", torch.float64)
        sums = torch.zeros(self.eval_set.num_images, values.shape[1], dtype=torch.float64)
        sums.index_add_(0, self.eval_set.image_index, values)
        return (sums / self._image_count[:, None]).mean(0)

    def evaluate(self, model: nn.Module, *, distributed: bool = False) -> torch.Tensor:
        """Fitness ``(m,)`` of ``model`` (float64, CPU)."""
        rank, world = _split(distributed)
        if world == 1:
            return self.aggregate(self.patch_values(model))
        values = self.patch_values(model, range(rank, len(self.batches), world)).clone()
        torch.distributed.all_reduce(values)  # others' rows are 0 here: the sum is exact
        return self.aggregate(values)

    def evaluate_state(self, model: nn.Module, state: Mapping[str, torch.Tensor], *, distributed: bool = False):
        """Load ``state`` into the scratch ``model`` (strictly) and evaluate it. With ``channels_last``
        the scratch model's weights are switched to it, so that convolutions need no per-call copy."""
        with torch.no_grad():
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
            model.load_state_dict(state, strict=True)
        return self.evaluate(model, distributed=distributed)

    def evaluate_states(
        self, model: nn.Module, states: Sequence[Mapping[str, torch.Tensor]], *, distributed: bool = False
    ) -> torch.Tensor:
        """Fitness ``(len(states), m)`` of several state dicts, one scratch ``model`` for all."""
        rank, world = _split(distributed)
        out = torch.zeros(len(states), self.num_objectives, dtype=torch.float64)
        mine = range(rank, len(states), world)
        local = [(c, self.evaluate_state(model, states[c]).tolist()) for c in mine]
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, local)
            local = [item for part in gathered for item in part]
        for c, vals in local:
            out[c] = torch.tensor(vals, dtype=torch.float64)
        return out
