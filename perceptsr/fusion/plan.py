"""Planning a dynamic network: which layers of a backbone become dynamic, and the strict checks
that K experts fit the backbone and agree outside those layers (spec ``shared/specs/eaadam.md`` §3).

Layers are found by walking the module tree, so one implementation serves every backbone. Tensors
outside dynamic layers that differ between experts (e.g. SwinIR's ``relative_position_bias_table``,
trained by Adam in stage A but never touched by SBX or mutation) follow an explicit *static policy*
(:data:`STATIC_POLICIES`): ``error`` (the default: a CheckpointError names the keys), ``average``
(the mean of the K experts) or ``first`` (expert 0's, i.e. the PSNR model's). The release silently
keeps expert K-1's.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

import torch
from torch import nn

from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.state_dicts import key_report, listing
from perceptsr.fusion.layers import DYNAMIC_CLASSES, LAYER_TYPES

__all__ = ["StateDict", "ExpertLike", "Plan", "STATIC_POLICIES", "static_vector", "plan_layers", "make_template",
           "read_experts", "replace_modules", "layer_key"]

StateDict = dict[str, torch.Tensor]
ExpertLike = Union[Mapping[str, torch.Tensor], nn.Module, str, os.PathLike]

#: what happens to tensors outside the dynamic layers that differ between experts
STATIC_POLICIES = ("error", "average", "first")


def static_vector(policy: str, k: int) -> torch.Tensor | None:
    """The K mixing weights (float64) that ``policy`` gives differing static tensors: uniform for
    ``average``, one-hot on expert 0 for ``first``, None for ``error``."""
    if policy not in STATIC_POLICIES:
        raise ConfigError(f"static_policy: {policy!r} is not one of {list(STATIC_POLICIES)}")
    if policy == "error":
        return None
    if policy == "average":
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    vec = torch.zeros(k, dtype=torch.float64)
    vec[0] = 1.0
    return vec


def _resolve_types(layer_types: Iterable[str]) -> tuple[str, ...]:
    types = tuple(str(t).lower().replace("_", "").replace("nn.", "") for t in layer_types)
    bad = [t for t in types if t not in DYNAMIC_CLASSES]
    if bad or not types:
        raise ConfigError(f"layer_types: unknown {bad or '(empty)'}; choose from {list(LAYER_TYPES)}")
    return types


def _kind_of(module: nn.Module, types: Sequence[str]) -> str | None:
    for kind in types:
        base = DYNAMIC_CLASSES[kind][0]
        # subclasses with their own forward (e.g. weight-standardised convs) keep their own semantics
        if isinstance(module, base) and type(module).forward is base.forward:
            if kind == "layernorm" and (len(module.normalized_shape) != 1 or not module.elementwise_affine):
                return None
            if getattr(module, "weight", None) is None or not module.weight.is_floating_point():
                return None
            return kind
    return None


@dataclasses.dataclass
class Plan:
    """The dynamic layers of a template, by name in module order."""

    layers: dict[str, tuple[str, nn.Module]]  # primary name -> (kind, module)
    aliases: dict[str, list[str]]  # primary name -> every name of that module (shared modules)
    static: list[str] = dataclasses.field(default_factory=list)  # keys outside the layers that differ


def make_template(template: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """A private copy of the backbone: ``template`` deep-copied, or made by the factory."""
    if isinstance(template, nn.Module):
        return copy.deepcopy(template)
    if callable(template):
        made = template()
        if not isinstance(made, nn.Module):
            raise ConfigError(f"the backbone factory returned {type(made).__name__}, not an nn.Module")
        return made
    raise ConfigError(f"template must be an nn.Module or a factory returning one, got {type(template).__name__}")


def read_experts(experts: Sequence[ExpertLike]) -> tuple[list[StateDict], list[str | None]]:
    """The K experts as detached state dicts, with their source files (None for in-memory experts)."""
    from perceptsr.checkpoint import read_state_dict, strip_prefixes

    if isinstance(experts, (Mapping, nn.Module, str, os.PathLike)) or not isinstance(experts, Iterable):
        raise ConfigError("expert_state_dicts must be a list (one entry per expert, in expert order)")
    sds, sources = [], []
    for i, e in enumerate(experts):
        if isinstance(e, (str, os.PathLike)):
            sds.append(read_state_dict(e))
            sources.append(str(e))
            continue
        if isinstance(e, nn.Module):
            e = e.state_dict()
        if not isinstance(e, Mapping):
            raise ConfigError(
                f"expert {i}: expected a state dict, an nn.Module or a checkpoint path, got {type(e).__name__}"
            )
        sds.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in strip_prefixes(e).items()})
        sources.append(None)
    if not sds:
        raise ConfigError("fusion needs at least one expert")
    return sds, sources


def _check_expert_keys(expected: Mapping[str, torch.Tensor], sds: Sequence[StateDict], sources, template) -> None:
    for i, sd in enumerate(sds):
        where = f" ({sources[i]})" if sources and sources[i] else ""
        report = key_report(expected, sd, what=f"expert {i}{where} does not match the template "
                            f"{type(template).__name__} strictly", labels=("template", "expert"),
                            hint="(all experts must be the template's architecture with the same arguments)")
        if report:
            raise CheckpointError(report)


def plan_layers(template: nn.Module, sds: Sequence[StateDict], sources, layer_types: Iterable[str],
                strict_static: bool = True) -> Plan:
    """The layers of ``template`` that become dynamic, after checking that every expert fits it
    strictly. Keys outside those layers that differ between experts are listed in ``Plan.static``;
    with ``strict_static`` (static policy ``error``) they raise a CheckpointError instead."""
    types = _resolve_types(layer_types)
    expected = template.state_dict()
    _check_expert_keys(expected, sds, sources, template)
    names_of: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    # nn.MultiheadAttention reads its out_proj weight directly instead of calling it: leave it static
    skip = {id(c) for m in template.modules() if isinstance(m, nn.MultiheadAttention) for c in m.children()}
    for name, m in template.named_modules(remove_duplicate=False):
        if id(m) in skip:
            continue
        names_of.setdefault(id(m), []).append(name)
        modules[id(m)] = m
    layers: dict[str, tuple[str, nn.Module]] = {}
    aliases: dict[str, list[str]] = {}
    dynamic_keys: set[str] = set()
    for ident, names in names_of.items():
        m = modules[ident]
        kind = _kind_of(m, types)
        if kind is None:
            continue
        params = [p for p in ("weight", "bias") if getattr(m, p, None) is not None]
        keys = [f"{n}.{p}" if n else p for n in names for p in params]
        if not all(k in expected for k in keys):  # e.g. parametrized weights: leave the layer static
            continue
        layers[names[0]] = (kind, m)
        aliases[names[0]] = names
        dynamic_keys.update(keys)
    if not layers:
        raise ConfigError(f"{type(template).__name__} has no layer of the types {list(types)}: nothing to fuse")
    differ = [k for k in expected if k not in dynamic_keys
              and any(not torch.equal(sds[0][k].cpu(), sd[k].cpu()) for sd in sds[1:])]
    if differ and strict_static:
        raise CheckpointError(
            f"the experts differ in {len(differ)} tensor(s) outside the dynamic layers ({'/'.join(types)}), which "
            f"fusion cannot mix per image: {listing(differ)}. Only weights and biases of "
            f"{', '.join('nn.' + DYNAMIC_CLASSES[t][0].__name__ for t in LAYER_TYPES)} layers are mixed "
            "(layer_types selects them); choose what the others become with static_policy: average (mean of "
            "the experts) or first (expert 0's) (config key 'objective.static_policy' in a fusion run)."
        )
    return Plan(layers, aliases, differ)


def replace_modules(root: nn.Module, mapping: Mapping[int, nn.Module]) -> nn.Module:
    """``root`` with every submodule whose id is in ``mapping`` swapped for its replacement."""
    if id(root) in mapping:
        return mapping[id(root)]
    for parent in list(root.modules()):
        for cname, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                parent._modules[cname] = mapping[id(child)]
    return root


def layer_key(name: str, param: str) -> str:
    """The state-dict key of parameter ``param`` of layer ``name`` (the root layer has no prefix)."""
    return f"{name}.{param}" if name else param
