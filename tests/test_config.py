"""Typed config loading: types, numeric strings, unknown keys with hints, overrides, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from perceptsr.config import (
    CosineRestartScheduleConfig,
    MultiStepScheduleConfig,
    ObjectiveConfig,
    PSNRObjectiveConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
    variant_base,
)
from perceptsr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
name: tiny
model: {arch: msrresnet, kwargs: {num_feat: 8, num_block: 1}}
data:
  train: {hr_dir: some/hr, patch_size: 32, batch_size: 4}
train: {iterations: 100}
"""


def _write(tmp_path: Path, text: str, name: str = "cfg.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _err(tmp_path: Path, text: str, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), TrainConfig, overrides=list(overrides))
    return str(info.value)


def test_minimal_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.name == "tiny" and cfg.scale == 4 and cfg.seed == 0
    assert cfg.model.kwargs == {"num_feat": 8, "num_block": 1}
    assert isinstance(cfg.objective, PSNRObjectiveConfig) and cfg.objective.loss == "l1"
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.schedule.type == "constant"
    assert cfg.data.val is None
    assert cfg.train.nan_policy == "stop" and cfg.train.ema_decay == 0.999
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


def test_numeric_strings_and_whole_floats(tmp_path):
    # PyYAML 1.1 reads 1e-4 / 5e3 as strings: they must still be numbers.
    text = MINIMAL.replace("train: {iterations: 100}", "train: {iterations: 5e3, grad_clip: '1e-1', val_every: 2.0e3}")
    text += "optim: {lr: 1e-4, betas: ['0.9', 0.999]}\n"
    cfg = load_config(_write(tmp_path, text))
    assert cfg.train.iterations == 5000 and isinstance(cfg.train.iterations, int)
    assert cfg.train.val_every == 2000
    assert cfg.train.grad_clip == pytest.approx(0.1)
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.999)


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        (MINIMAL, ["train.iterations=12.5"], ["'train.iterations'", "expected int", "12.5", "not a whole number"]),
        (MINIMAL, ["train.iterations=abc"], ["'train.iterations'", "expected int", "'abc'"]),
        (MINIMAL, ["train.bf16=1"], ["'train.bf16'", "expected bool", "true or false"]),
        (MINIMAL, ["optim.lr=fast"], ["'optim.lr'", "expected float", "'fast'"]),
        (MINIMAL, ["optim.betas=[0.9]"], ["'optim.betas'", "2 items"]),
        (MINIMAL, ["optim.type=sgd"], ["'optim.type'", "'sgd'", "'adam', 'adamw'"]),
        (MINIMAL, ["objective.loss=charbonier"], ["'objective.loss'", "did you mean 'charbonnier'"]),
        (MINIMAL, ["model.kwargs=[1, 2]"], ["'model.kwargs'", "expected mapping"]),
        (MINIMAL, ["data.train.batch_size=0"], ["'data.train.batch_size'", "must be positive", "0"]),
        (MINIMAL, ["data.train.patch_size=30"], ["'data.train.patch_size'", "multiple of scale 4"]),
        (MINIMAL, ["train.ema_decay=1.5"], ["'train.ema_decay'", "[0, 1)"]),
        (MINIMAL, ["data.train=null"], ["'data.train'", "mapping"]),
    ],
)
def test_type_errors_name_key_value_and_expectation(tmp_path, text, overrides, expected):
    message = _err(tmp_path, text, overrides)
    for part in expected:
        assert part in message, (part, message)


def test_unknown_keys_did_you_mean(tmp_path):
    message = _err(tmp_path, MINIMAL, ["train.log_evry=5"])
    assert "unknown config key 'train.log_evry'" in message
    assert "did you mean 'train.log_every'" in message
    assert "cfg.yml" in message  # the file is named too
    message = _err(tmp_path, MINIMAL + "optm: {lr: 1e-3}\n")
    assert "'optm'" in message and "did you mean 'optim'" in message
    message = _err(tmp_path, MINIMAL, ["data.train.patchsize=64"])
    assert "'data.train.patchsize'" in message and "'data.train.patch_size'" in message


def test_missing_required_key(tmp_path):
    message = _err(tmp_path, MINIMAL.replace("train: {iterations: 100}", "train: {log_every: 5}"))
    assert "'train.iterations' is required" in message
    message = _err(tmp_path, MINIMAL.replace("name: tiny", ""))
    assert "'name' is required" in message


def test_variant_sections(tmp_path):
    text = MINIMAL + "schedule: {type: cosine, periods: [10, 20], restart_weights: [1, 0.5], eta_min: 1e-7}\n"
    cfg = load_config(_write(tmp_path, text))
    assert isinstance(cfg.schedule, CosineRestartScheduleConfig)
    assert cfg.schedule.periods == (10, 20) and cfg.schedule.restart_weights == (1.0, 0.5)
    cfg = load_config(_write(tmp_path, MINIMAL), overrides=["schedule={type: multistep, milestones: [5, 9]}"])
    assert isinstance(cfg.schedule, MultiStepScheduleConfig) and cfg.schedule.milestones == (5, 9)
    # keys of another variant are unknown for this one, and the message says which type
    message = _err(tmp_path, MINIMAL + "schedule: {type: multistep, periods: [10]}\n")
    assert "'schedule.periods'" in message and "type 'multistep'" in message and "milestones" in message
    message = _err(tmp_path, MINIMAL + "schedule: {type: cosin}\n")
    assert "'schedule.type'" in message and "did you mean 'cosine'" in message
    message = _err(tmp_path, MINIMAL + "schedule: {type: cosine, periods: [10, 20], restart_weights: [1]}\n")
    assert "'schedule.restart_weights'" in message and "one weight per period" in message


@ObjectiveConfig.register("toy_gan_for_test")
@dataclasses.dataclass(frozen=True)
class ToyGAN(ObjectiveConfig):
    type: str = "toy_gan_for_test"
    gan_weight: float = 5e-3
    d_arch: str = "vgg_discriminator_128"
    layers: dict[str, float] = dataclasses.field(default_factory=lambda: {"conv5_4": 1.0})


def test_objectives_register_their_own_options():
    base = {"name": "x", "model": {"arch": "srresnet"}, "data": {"train": {"hr_dir": "a"}},
            "train": {"iterations": 1}}
    cfg = config_from_dict(TrainConfig, {**base, "objective": {"type": "toy_gan_for_test", "gan_weight": "1e-2"}})
    assert isinstance(cfg.objective, ToyGAN) and cfg.objective.gan_weight == pytest.approx(0.01)
    assert cfg.objective.layers == {"conv5_4": 1.0}
    with pytest.raises(ConfigError, match=r"'objective.gan_wieght'.*did you mean 'objective.gan_weight'"):
        config_from_dict(TrainConfig, {**base, "objective": {"type": "toy_gan_for_test", "gan_wieght": 1}})
    with pytest.raises(ValueError, match="already registered"):
        ObjectiveConfig.register("psnr")(ToyGAN)


# Schema classes live at module level: with postponed annotations they are resolved by name.
@variant_base
@dataclasses.dataclass(frozen=True)
class Shape:
    type: str = "circle"


@Shape.register("circle")
@dataclasses.dataclass(frozen=True)
class Circle(Shape):
    type: str = "circle"
    r: float = 1.0


@dataclasses.dataclass(frozen=True)
class Inner:
    mode: Literal["a", "b"] = "a"
    values: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner
    maybe: Optional[int] = None
    pair: tuple[int, str] = (1, "x")
    anything: Any = None
    table: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    shape: Shape = dataclasses.field(default_factory=Circle)


def test_generic_annotations():
    cfg = config_from_dict(Outer, {"inner": {"mode": "b", "values": ["3", 4.0]}, "maybe": "7", "pair": [2, "y"],
                                   "anything": {"k": [1]}, "table": {"a": ["1e-3"]}, "shape": {"r": 2}})
    assert cfg.inner == Inner("b", [3, 4]) and cfg.maybe == 7 and cfg.pair == (2, "y")
    assert cfg.anything == {"k": [1]} and cfg.table == {"a": [0.001]} and cfg.shape == Circle(r=2.0)
    assert config_from_dict(Outer, {"inner": {}, "maybe": None}).maybe is None
    with pytest.raises(ConfigError, match=r"'inner.values\[1\]'"):
        config_from_dict(Outer, {"inner": {"values": [1, "x"]}})
    with pytest.raises(ConfigError, match=r"'table.a\[0\]'"):
        config_from_dict(Outer, {"inner": {}, "table": {"a": [None]}})
    with pytest.raises(ConfigError, match="'pair'"):
        config_from_dict(Outer, {"inner": {}, "pair": [1, 2, 3]})


def test_overrides():
    assert parse_override("a.b=1e-4") == ("a.b", "1e-4")  # YAML 1.1: a string, converted later
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=") == ("a.b", "")
    assert parse_override("a={x: 1}") == ("a", {"x": 1})
    data = {"a": {"b": 1}, "c": 2}
    out = apply_overrides(data, ["a.b=3", "a.new.deep=4", "c=x"])
    assert out == {"a": {"b": 3, "new": {"deep": 4}}, "c": "x"} and data == {"a": {"b": 1}, "c": 2}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="empty key part"):
        parse_override("a..b=1")
    with pytest.raises(ConfigError, match="'c' is 2, not a section"):
        apply_overrides(data, ["c.d=1"])


def test_overrides_on_load(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), overrides=[
        "optim.lr=2e-4", "optim.betas=[0.9, 0.999]", "train.bf16=true", "model.pretrained=x.pth",
        "data.val.hr_dir=val/hr", "objective.loss=charbonnier",
    ])
    assert cfg.optim.lr == pytest.approx(2e-4) and cfg.optim.betas == (0.9, 0.999) and cfg.train.bf16
    assert cfg.model.pretrained == "x.pth" and cfg.data.val.hr_dir == "val/hr"
    assert cfg.objective.loss == "charbonnier"


def test_dump_load_round_trip(tmp_path):
    text = MINIMAL + (
        "schedule: {type: cosine, periods: [4, 4], restart_weights: [1, 0.5]}\n"
        "objective: {type: psnr, loss: charbonnier, charbonnier_eps: 1e-6}\n"
    )
    cfg = load_config(_write(tmp_path, text), overrides=["data.val.hr_dir=v", "train.grad_clip=0.5"])
    path = tmp_path / "out" / "config.yml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert "betas: [0.9, 0.99]" in path.read_text()


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/*_psnr.yml")), ids=lambda p: p.parent.name + "/" + p.name)
def test_shipped_psnr_configs_load(path):
    cfg = load_config(path)
    assert cfg.objective.type == "psnr"
    from perceptsr.archs import build_arch, get_arch

    get_arch(cfg.model.arch)  # the architecture exists
    if path.parent.name == "cpu":
        build_arch(cfg.model.arch, **cfg.model.kwargs)



@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/*.yml")), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_shipped_config_prints(path, capsys):
    """Each YAML in configs/ loads through ``perceptsr train CFG --print-config``, the printed config
    loads back to the same one, and its architectures are registered."""
    import yaml

    from perceptsr.archs import get_arch
    from perceptsr.cli import main

    assert main(["train", str(path), "--print-config"]) == 0
    cfg = load_config(path)
    assert config_from_dict(type(cfg), yaml.safe_load(capsys.readouterr().out)) == cfg
    get_arch(cfg.model.arch)
    discriminator = getattr(cfg.objective, "discriminator", None)
    if discriminator is not None:
        assert get_arch(discriminator.arch).kind == "discriminator"
