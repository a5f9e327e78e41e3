"""The dynamic network of EA-Adam stage B and its collapse into one plain backbone (stage C), spec
``shared/specs/eaadam.md`` §3, §4.2.

:class:`DynamicNetwork` is the dynamic twin of *any* backbone: every ``nn.Conv2d`` (and, by default,
``nn.Linear`` and ``nn.LayerNorm``) of a template module is replaced by a dynamic layer
(:mod:`perceptsr.fusion.layers`) holding the K frozen expert parameter sets and an attention
regressor. Only the regressors are trainable (:meth:`DynamicNetwork.trainable_parameters`); the
training loop itself lives in ``perceptsr.train``. Fusion weights are keyed by layer name, not by
call order (the release pairs them by position).

:func:`collapse` mixes each layer's weight and bias with its averaged vector,
``θ_l = Σ_j w̄_{l,j} θ_l^{(j)}`` (in float64), into a plain backbone.

Floating tensors outside the dynamic layers that differ between experts are mixed once, with the
fixed K-vector of the ``static_policy`` (:data:`~perceptsr.fusion.plan.STATIC_POLICIES`; ``error``
refuses them), in stage B and in stage C alike, so the collapsed model keeps the tensors the
regressors were trained with. Differing non-floating tensors (counters) come from expert 0.

State-dict keys follow the release (``<layer>.weight``, ``<layer>.bias``, ``<layer>.fusion.*``), so
released stage-B checkpoints load with :func:`load_attention` and their stacked experts are checked
against ours.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from perceptsr.checkpoint.format import unwrap_module
from perceptsr.state_dicts import key_report, listing
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.fusion.files import member_files
from perceptsr.fusion.layers import (
    DYNAMIC_CLASSES, LAYER_TYPES, AttentionConfig, BatchContext, DynamicLayer, as_vector, default_attention_config,
)
from perceptsr.fusion.positions import WeightsLike
from perceptsr.fusion.plan import (
    ExpertLike, StateDict, layer_key, make_template, plan_layers, read_experts, replace_modules, static_vector,
)

__all__ = ["DynamicNetwork", "StaticLike", "load_attention", "fuse_state_dicts", "collapse"]

#: a static policy name, or the K weights to mix differing static tensors with
StaticLike = Union[str, torch.Tensor, Sequence[float]]


def _static_weights(static: StaticLike, k: int) -> torch.Tensor | None:
    """The K-vector for differing static tensors (None: they are an error)."""
    if isinstance(static, str):
        return static_vector(static, k)
    return as_vector(static, k, "static weights")


def _mixed_static(sds: Sequence[StateDict], keys: Sequence[str], vec: torch.Tensor | None) -> StateDict:
    """The differing static tensors ``keys`` mixed with ``vec`` (non-floating ones: expert 0's)."""
    out = {}
    for key in keys:
        first = sds[0][key]
        out[key] = _mix_tensor(torch.stack([sd[key] for sd in sds]), vec) if first.is_floating_point() else first
    return out


class DynamicNetwork(nn.Module):
    """The dynamic twin of a backbone (EA-Adam stage B).

    ``DynamicNetwork(template, expert_state_dicts, *, attention=None, layer_types=LAYER_TYPES,
    seed=None)``:

    * ``template``: the backbone (an ``nn.Module``, deep-copied, or a zero-argument factory);
    * ``expert_state_dicts``: K state dicts (or modules, or checkpoint paths) that must load
      strictly into the template; **expert j is the j-th entry** (sort by individual index, e.g.
      with :func:`sort_expert_files`, and use the same order in stages B and C);
    * ``attention``: an :class:`AttentionConfig` (default :func:`default_attention_config`) or a
      factory ``(layer_name, layer) -> module`` returning ``(N, K)`` weights;
    * ``layer_types``: which of ``"conv2d"``, ``"linear"``, ``"layernorm"`` become dynamic;
    * ``static_policy``: what every other tensor that differs between experts becomes:
      ``"error"`` (a CheckpointError names them), ``"average"`` (mean of the experts) or ``"first"``
      (expert 0's); see :data:`~perceptsr.fusion.plan.STATIC_POLICIES`;
    * ``seed``: seeds the regressors' initialisation (global RNG untouched).

    ``forward`` runs the backbone. Expert stacks are frozen parameters (``requires_grad=False``;
    they are not DDP-broadcast every step as buffers would be); only the regressors train.
    """

    def __init__(
        self,
        template: nn.Module | Callable[[], nn.Module],
        expert_state_dicts: Sequence[ExpertLike],
        *,
        attention: AttentionConfig | Callable[[str, nn.Module], nn.Module] | None = None,
        layer_types: Iterable[str] = LAYER_TYPES,
        static_policy: str = "error",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        plain = make_template(template)
        sds, sources = read_experts(expert_state_dicts)
        static = static_vector(static_policy, len(sds))
        plan = plan_layers(plain, sds, sources, layer_types, strict_static=static is None)
        plain.load_state_dict({**sds[0], **_mixed_static(sds, plan.static, static)}, strict=True)
        self.static_policy = static_policy
        self.static_keys: list[str] = list(plan.static)  # differing tensors outside the layers, mixed by the policy
        # a pristine plain copy (expert 0 everywhere) for collapse; kept out of the module tree
        self.__dict__["_template"] = copy.deepcopy(plain)
        if attention is None:
            attention = default_attention_config(plain)
        self.attention_config = attention if isinstance(attention, AttentionConfig) else None
        self.num_experts = len(sds)
        self.expert_sources: list[str | None] = sources
        self.arch: str | None = None
        self.arch_kwargs: dict[str, Any] | None = None
        self._context = BatchContext()
        self._aliases = plan.aliases
        mapping: dict[int, nn.Module] = {}
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            for name, (kind, layer) in plan.layers.items():
                weight = torch.stack([sd[layer_key(name, "weight")] for sd in sds])
                bias = (torch.stack([sd[layer_key(name, "bias")] for sd in sds])
                        if getattr(layer, "bias", None) is not None else None)
                cls = DYNAMIC_CLASSES[kind][1]
                if isinstance(attention, AttentionConfig):
                    dyn = cls.from_stacked(layer, weight, bias, config=attention)
                else:
                    att = attention(name, layer)
                    if not isinstance(att, nn.Module):
                        raise ConfigError(f"the attention factory returned {type(att).__name__} for {name!r}, not a module")
                    dyn = cls.from_stacked(layer, weight, bias, att)
                dyn._context = self._context
                mapping[id(layer)] = dyn
        del sds
        self.net = replace_modules(plain, mapping)
        for attr in ("scale", "upscale", "input_multiple"):
            if hasattr(plain, attr) and not isinstance(getattr(plain, attr), (nn.Module, torch.Tensor)):
                setattr(self, attr, getattr(plain, attr))
        self.layer_names: list[str] = list(plan.layers)
        self._layers = {name: mapping[id(layer)] for name, (_, layer) in plan.layers.items()}
        self.perceptsr_meta: dict[str, Any] = dict(getattr(plain, "perceptsr_meta", None) or {})
        self.train(plain.training)

    @classmethod
    def from_files(
        cls, files: Sequence[str | os.PathLike] | str | os.PathLike, *, sort: bool = True, arch: str | None = None,
        arch_kwargs: Mapping[str, Any] | None = None, **kwargs: Any,
    ) -> DynamicNetwork:
        """Build from expert checkpoint files (native or legacy, e.g. the release's
        ``model_x4_{epoch}_{i}.pt``) or a folder of them, sorted by individual index unless
        ``sort=False``; the architecture comes from the files (or ``arch``/``arch_kwargs``)."""
        from perceptsr.checkpoint import load_model

        paths = member_files(files, sort=sort)
        models = [load_model(p, arch=arch, arch_kwargs=arch_kwargs) for p in paths]
        metas = [(m.perceptsr_meta["arch"], m.perceptsr_meta["arch_kwargs"]) for m in models]
        for p, meta in zip(paths[1:], metas[1:]):
            if meta != metas[0]:
                raise CheckpointError(f"{p}: architecture {meta} differs from {paths[0]}'s {metas[0]}")
        net = cls(models[0], [m.state_dict() for m in models], **kwargs)
        net.expert_sources = [str(p) for p in paths]
        net.arch, net.arch_kwargs = metas[0][0], dict(metas[0][1])
        net.perceptsr_meta = {"arch": net.arch, "arch_kwargs": net.arch_kwargs,
                              "scale": models[0].perceptsr_meta.get("scale")}
        return net

    # ---- running

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self._context.batch = int(first.shape[0]) if first is not None and first.ndim > 0 else None
        for layer in self._layers.values():
            layer.last_weights = None
        return self.net(*args, **kwargs)

    def dynamic_layers(self) -> dict[str, DynamicLayer]:
        """Layer name (path in the template, e.g. ``body.0.conv1``) -> dynamic layer, in module order."""
        return dict(self._layers)

    def last_weights(self, *, detach: bool = True) -> dict[str, torch.Tensor]:
        """``{layer: (N, K)}`` weights of the last forward (layers that did not run are left out)."""
        out = {}
        for name, layer in self._layers.items():
            if layer.last_weights is not None:
                out[name] = layer.last_weights.detach() if detach else layer.last_weights
        return out

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters to optimise: the attention regressors (experts are frozen)."""
        return [p for _, p in self.named_trainable_parameters()]

    def num_attention_parameters(self) -> int:
        return sum(p.numel() for layer in self._layers.values() for p in layer.fusion.parameters())

    # ---- fixed weights (collapse equivalence, trade-off previews)

    def _weights_per_layer(self, weights: WeightsLike) -> dict[str, torch.Tensor]:
        return _normalise_weights(weights, self.layer_names, self.num_experts)

    def set_fixed_weights(self, weights: WeightsLike | None) -> None:
        """Use ``weights`` (``{layer: K-vector}`` for every layer, or one K-vector for all) instead of
        the regressors; ``None`` switches the regressors back on."""
        if weights is None:
            for layer in self._layers.values():
                layer.set_fixed_weights(None)
            return
        for name, vec in self._weights_per_layer(weights).items():
            self._layers[name].set_fixed_weights(vec)

    def fixed_weights(self) -> dict[str, torch.Tensor] | None:
        """The forced weights per layer, or None when the regressors are active (in any layer)."""
        vals = {n: layer.fixed_weights for n, layer in self._layers.items()}
        return None if any(v is None for v in vals.values()) else vals

    @contextlib.contextmanager
    def using_weights(self, weights: WeightsLike | None) -> Iterator[DynamicNetwork]:
        """Temporarily force ``weights`` (None: temporarily use the regressors)."""
        saved = {n: layer.fixed_weights for n, layer in self._layers.items()}
        self.set_fixed_weights(weights)
        try:
            yield self
        finally:
            for n, layer in self._layers.items():
                layer.set_fixed_weights(saved[n])

    # ---- attention state (resume)

    def attention_state_dict(self) -> StateDict:
        """``{"<layer>.fusion.<param>": tensor}``: the trainable part only, release key names."""
        out = {}
        for name, layer in self._layers.items():
            for k, v in layer.fusion.state_dict().items():
                out[f"{name}.fusion.{k}" if name else f"fusion.{k}"] = v
        return out

    def load_attention_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, check_experts: bool = True,
        source: str | None = None,
    ) -> None:
        """Load regressor weights from :meth:`attention_state_dict`, a full DynamicNetwork state dict
        or a released stage-B ``model_state_dict`` (``module.`` stripped). Stacked experts found in
        it are compared with ours (``check_experts``); a different expert order is reported."""
        from perceptsr.checkpoint import strip_prefixes

        where = f"{source}: " if source else ""
        sd = strip_prefixes(state_dict)
        if sd and all(k.startswith("net.") for k in sd):
            sd = {k[len("net."):]: v for k, v in sd.items()}
        expected = self.attention_state_dict()
        expert_keys = {layer_key(n, p): (n, p) for n, layer in self._layers.items() for p in layer.expert_tensors()}
        static = set(self._template.state_dict())
        if check_experts:
            self._check_stacked_experts({k: sd[k] for k in expert_keys if k in sd}, expert_keys, where)
        att = {k: v for k, v in sd.items() if k in expected}
        others = {k: v for k, v in sd.items() if k not in expected and k not in expert_keys and k not in static}
        report = key_report(expected, {**att, **others}, strict=strict,
                            what=f"{where}attention weights do not fit this DynamicNetwork ({len(self._layers)} layers, "
                                 f"K={self.num_experts})")
        if report:
            raise CheckpointError(report)
        with torch.no_grad():
            params = {}
            for name, layer in self._layers.items():
                prefix = f"{name}.fusion." if name else "fusion."
                for k, t in layer.fusion.state_dict(keep_vars=True).items():
                    params[prefix + k] = t
            for k, v in att.items():
                params[k].copy_(v)

    def _check_stacked_experts(self, found: Mapping[str, torch.Tensor], expert_keys, where: str) -> None:
        bad = []
        for key, value in found.items():
            name, p = expert_keys[key]
            ours = getattr(self._layers[name], p)
            if tuple(value.shape) != tuple(ours.shape) or not torch.allclose(value.to(ours), ours, rtol=0, atol=1e-6):
                bad.append(key)
        if not bad:
            return
        key = bad[0]
        name, p = expert_keys[key]
        ours, theirs = getattr(self._layers[name], p), found[key]
        hint = ""
        if tuple(theirs.shape) == tuple(ours.shape):
            order = []
            for j in range(theirs.shape[0]):
                hits = [i for i in range(ours.shape[0]) if torch.allclose(theirs[j].to(ours), ours[i], rtol=0, atol=1e-6)]
                order.append(str(hits[0]) if hits else "?")
            hint = (f" Stored expert j is our expert {', '.join(f'{j}->{o}' for j, o in enumerate(order))}"
                    + ("; rebuild with the experts in the stored order." if "?" not in order else
                       "; some stored experts are not among ours."))
        raise CheckpointError(
            f"{where}the stacked expert weights differ from this network's experts in {len(bad)} tensor(s), e.g. "
            f"{listing(bad)}.{hint} (pass check_experts=False to load the attention anyway)"
        )



def load_attention(
    path: str | os.PathLike, dynamic_net: DynamicNetwork, *, strict: bool = True, check_experts: bool = True,
) -> dict[str, Any]:
    """Load the regressors from a stage-B checkpoint (the ``net_g.safetensors`` a fusion run saves)
    or any file holding a DynamicNetwork / released stage-B state dict (e.g. ``model_x4_10.pt``).
    The stacked experts in it are checked against ours; a mismatch names the expert order found.
    Returns the file's metadata (``{}`` for foreign files)."""
    from perceptsr.checkpoint import read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such attention checkpoint")
    ckpt = read_checkpoint(path)
    dynamic_net.load_attention_state_dict(ckpt.state_dict, strict=strict, check_experts=check_experts,
                                          source=str(path))
    return dict(ckpt.meta)


# --------------------------------------------------------------------------------------------
# fusion weights per layer, collapse


def _normalise_weights(weights: WeightsLike, names: Sequence[str], k: int) -> dict[str, torch.Tensor]:
    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        unexpected = [n for n in weights if n not in names]
        if missing or unexpected:
            raise ConfigError(
                f"fusion weights do not match the dynamic layers: missing layers ({len(missing)}): "
                f"{listing(missing) or 'none'}; unexpected layers ({len(unexpected)}): {listing(unexpected) or 'none'}"
            )
        return {n: as_vector(weights[n], k, f"fusion weights of layer {n!r}") for n in names}
    vec = as_vector(weights, k, "fusion weights")
    return {n: vec for n in names}


def _mix_tensor(stack: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mixed = torch.tensordot(w.to(device=stack.device, dtype=torch.float64), stack.detach().double(), dims=1)
    return mixed.to(stack.dtype)


def fuse_state_dicts(
    template: nn.Module | Callable[[], nn.Module], expert_state_dicts: Sequence[ExpertLike], weights: WeightsLike,
    *, layer_types: Iterable[str] = LAYER_TYPES, static: StaticLike = "error",
) -> StateDict:
    """The collapsed state dict: each dynamic layer's weight/bias mixed with its K-vector (float64);
    every other tensor from expert 0, except those that differ between experts, which ``static``
    (a static policy name or K weights) mixes."""
    plain = make_template(template)
    sds, sources = read_experts(expert_state_dicts)
    static_w = _static_weights(static, len(sds))
    plan = plan_layers(plain, sds, sources, layer_types, strict_static=static_w is None)
    w = _normalise_weights(weights, list(plan.layers), len(sds))
    _warn_not_convex(w)
    out = {**sds[0], **_mixed_static(sds, plan.static, static_w)}
    for name, (_, layer) in plan.layers.items():
        for p in ("weight", "bias"):
            if getattr(layer, p, None) is None:
                continue
            mixed = _mix_tensor(torch.stack([sd[layer_key(name, p)] for sd in sds]), w[name])
            for alias in plan.aliases[name]:
                out[layer_key(alias, p)] = mixed
    return out


def _warn_not_convex(weights: Mapping[str, torch.Tensor]) -> None:
    off = [n for n, v in weights.items() if abs(float(v.sum()) - 1.0) > 1e-3 or bool((v < 0).any())]
    if off:
        warnings.warn(f"fusion weights of {len(off)} layer(s) are not a convex combination (e.g. {listing(off, 3)}); "
                      "the fused layers are extrapolated", stacklevel=3)


def collapse(
    source: DynamicNetwork | tuple[nn.Module | Callable[[], nn.Module], Sequence[ExpertLike]],
    weights: WeightsLike,
    *,
    layer_types: Iterable[str] = LAYER_TYPES,
    static: StaticLike = "error",
) -> nn.Module:
    """Stage C: one plain backbone with ``θ_l = Σ_j w_{l,j} θ_l^{(j)}`` per dynamic layer (weight and bias).

    ``source`` is a :class:`DynamicNetwork` (differing static tensors as its ``static_policy`` made
    them) or ``(template, expert_state_dicts)`` (no regressors are built then; ``layer_types`` and
    ``static`` apply to this form only). ``weights``: ``{layer: K-vector}`` for
    every dynamic layer, or one K-vector for all. The model comes back in eval mode on the device
    of the experts; ``perceptsr_meta`` carries arch/arch_kwargs/scale when known.
    """
    source = unwrap_module(source)
    if isinstance(source, DynamicNetwork):
        plain = copy.deepcopy(source._template)
        w = source._weights_per_layer(weights)
        _warn_not_convex(w)
        sd = plain.state_dict()
        device = source._layers[source.layer_names[0]].weight.device
        for name, layer in source._layers.items():
            for p, stack in layer.expert_tensors().items():
                mixed = _mix_tensor(stack, w[name])
                for alias in source._aliases[name]:
                    sd[layer_key(alias, p)] = mixed
        meta = dict(source.perceptsr_meta)
        meta.setdefault("fusion_experts", list(source.expert_sources))
    elif isinstance(source, tuple) and len(source) == 2:
        template, experts = source
        plain = make_template(template)
        sd = fuse_state_dicts(plain, experts, weights, layer_types=layer_types, static=static)
        device = next(iter(sd.values())).device
        meta = dict(getattr(template, "perceptsr_meta", {}) or {})
    else:
        raise ConfigError(f"collapse: expected a DynamicNetwork or (template, experts), got {type(source).__name__}")
    plain.load_state_dict(sd, strict=True)
    plain.to(device).eval()
    scale = getattr(plain, "scale", None)
    if meta.get("scale") is None and isinstance(scale, int) and not isinstance(scale, bool):
        meta["scale"] = scale
    keep = {k: meta[k] for k in ("arch", "arch_kwargs", "scale", "fusion_experts") if meta.get(k) is not None}
    if keep:
        plain.perceptsr_meta = keep
    return plain
