"""Hyperparameters: the shipped defaults, user YAML overrides, presets, and their validation.

Layering, lowest to highest: package defaults < ``--config`` YAML < the row's preset < the row's
own columns. Validation is pure (no I/O) so the manifest stage can report every problem at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .text import short_path, short_repr

OPTIMIZERS = ("lbfgs", "adam", "adamw")
ACTIVATIONS = ("relu", "selu")
RHYTHMS = ("none", "beats")
LOSS_SCALES = ("absolute", "relative")
BEAT_GRIDS = ("style", "content")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("float32", "tf32", "bf16")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type and the check its value must pass."""

    kind: type
    check: Callable[[Any], bool]
    rule: str  # human-readable form of `check`, used in error messages


def _positive(x: float) -> bool:
    return x > 0


def _non_negative(x: float) -> bool:
    return x >= 0


PARAMS: dict[str, Param] = {
    "preset": Param(str, lambda s: True, "a preset name"),
    "sample_rate": Param(int, lambda x: 1000 <= x <= 192000, "an integer in [1000, 192000]"),
    "max_seconds": Param(float, lambda x: 0 < x <= 3600, "a number in (0, 3600]"),
    "n_fft": Param(int, lambda x: 16 <= x <= 16384, "an integer in [16, 16384]"),
    "hop_length": Param(int, lambda x: 1 <= x <= 16384, "an integer in [1, 16384]"),
    "n_filters": Param(int, lambda x: 1 <= x <= 65536, "an integer in [1, 65536]"),
    "kernel_size": Param(int, lambda x: 1 <= x <= 1024, "an integer in [1, 1024]"),
    "activation": Param(str, lambda s: s in ACTIVATIONS, "one of " + ", ".join(ACTIVATIONS)),
    "content_weight": Param(float, _non_negative, "a number >= 0"),
    "style_weight": Param(float, _non_negative, "a number >= 0"),
    "content_weight_style": Param(float, _non_negative, "a number >= 0"),
    "style_weight_content": Param(float, _non_negative, "a number >= 0"),
    "loss_scale": Param(str, lambda s: s in LOSS_SCALES, "one of " + ", ".join(LOSS_SCALES)),
    "rhythm": Param(str, lambda s: s in RHYTHMS, "one of " + ", ".join(RHYTHMS)),
    "beat_grid": Param(str, lambda s: s in BEAT_GRIDS, "one of " + ", ".join(BEAT_GRIDS)),
    "bpm": Param(float, lambda x: x == 0 or 20 <= x <= 400, "0 (estimate) or a tempo in [20, 400]"),
    "beats_per_segment": Param(int, lambda x: 1 <= x <= 64, "an integer in [1, 64]"),
    "optimizer": Param(str, lambda s: s in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
    "lr": Param(float, _positive, "a number > 0"),
    "weight_decay": Param(float, _non_negative, "a number >= 0"),
    "lbfgs_history": Param(int, lambda x: 1 <= x <= 1000, "an integer in [1, 1000]"),
    "iterations": Param(int, lambda x: 1 <= x <= 1_000_000, "an integer in [1, 1000000]"),
    "patience": Param(int, lambda x: x >= 1, "an integer >= 1"),
    "min_delta": Param(float, _non_negative, "a number >= 0"),
    "lr_patience": Param(int, lambda x: x >= 0, "an integer >= 0"),
    "lr_factor": Param(float, lambda x: 0 < x < 1, "a number in (0, 1)"),
    "griffin_lim_iters": Param(int, lambda x: 0 <= x <= 100_000, "an integer in [0, 100000]"),
    "griffin_lim_momentum": Param(float, lambda x: 0 <= x < 1, "a number in [0, 1)"),
    "seed": Param(int, lambda x: 0 <= x < 2**63, "an integer in [0, 2**63 - 1]"),
    "device": Param(str, lambda s: s in DEVICES, "one of " + ", ".join(DEVICES)),
    "precision": Param(str, lambda s: s in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "max_memory_gb": Param(float, _positive, "a number > 0"),
}


@dataclass(frozen=True)
class Params:
    """One row's hyperparameters, fully resolved and validated: what every stage below the plan
    reads (``params.n_fft``), never a dict. Built only through ``from_mapping`` (or ``replace``),
    so every value has passed its ``PARAMS`` check; the field list equals ``PARAMS`` (checked at
    import)."""

    preset: str
    sample_rate: int
    max_seconds: float
    n_fft: int
    hop_length: int
    n_filters: int
    kernel_size: int
    activation: str
    content_weight: float
    style_weight: float
    content_weight_style: float
    style_weight_content: float
    loss_scale: str
    rhythm: str
    beat_grid: str
    bpm: float
    beats_per_segment: int
    optimizer: str
    lr: float
    weight_decay: float
    lbfgs_history: int
    iterations: int
    patience: int
    min_delta: float
    lr_patience: int
    lr_factor: float
    griffin_lim_iters: int
    griffin_lim_momentum: float
    seed: int
    device: str
    precision: str
    max_memory_gb: float

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "hyperparameters") -> Params:
        """Validate a complete mapping (every ``PARAMS`` name, nothing else); ConfigError names
        ``source`` and the first bad key."""
        unknown = sorted(map(str, set(values) - set(PARAMS)))
        missing = [name for name in PARAMS if name not in values]
        if unknown or missing:
            raise ConfigError(f"{source}: unknown {unknown}" if unknown else f"{source}: missing {missing}")
        return cls(**_validated(values, source))

    @classmethod
    def from_record(cls, values: Mapping[str, Any]) -> Params:
        """The hyperparameters stored in a record or checkpoint; a record written before a
        hyperparameter existed ran with its neutral value (``ID_NEUTRAL``)."""
        return cls.from_mapping({**ID_NEUTRAL, **values}, "record params")

    def replace(self, **changes: Any) -> Params:
        """A copy with ``changes`` applied, validated like any other."""
        return Params.from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (records, submissions, the pickle a job receives). Every field is a scalar,
        so a shallow dict is ``asdict``'s result at a fraction of its cost (a plan calls this per row)."""
        return {f.name: getattr(self, f.name) for f in _PARAMS_FIELDS}

    @property
    def n_bins(self) -> int:
        """Frequency bins of the row's spectrograms (the network's input channels)."""
        return self.n_fft // 2 + 1

    def network_key(self) -> tuple:
        """What decides the row's random conv network (its weights and what it computes): rows
        with equal keys can share one copy of it. ``features.Network.of(p).key()`` equals it."""
        return (self.n_bins, self.n_filters, self.kernel_size, self.seed, self.activation, self.precision)

    @property
    def beat_segmented(self) -> bool:
        """Tomczak et al.'s beat-segmented losses (``rhythm`` other than none)."""
        return self.rhythm != "none"


_PARAMS_FIELDS = fields(Params)
if [f.name for f in fields(Params)] != list(PARAMS) or any(
    PARAMS[f.name].kind.__name__ != f.type for f in fields(Params)
):
    raise AssertionError("config.Params and config.PARAMS list different hyperparameters or types")


# Hyperparameters that do not change the result and therefore stay out of the row id.
NOT_IN_ID = frozenset({"device", "preset", "max_memory_gb"})
# Hyperparameters added after results existed: at the value that reproduces the older behaviour they
# stay out of the row id, so earlier results keep their ids and are not redone.
ID_NEUTRAL = {"precision": "float32", "bpm": 0.0, "beats_per_segment": 1, "loss_scale": "absolute"}


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record (or row spec) as one flat index row: its ``params`` spread into columns; records
    written before a hyperparameter existed ran with its neutral value (``ID_NEUTRAL``)."""
    rest = dict(record)
    params = rest.pop("params", {}) or {}
    return {**ID_NEUTRAL, **params, **rest}


# Largest finite float32: every float hyperparameter ends up in float32 arithmetic on the device.
FLOAT32_MAX = 3.4028234663852886e38
# A config or profile is a few hundred bytes; anything near this is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20


def shown(raw: Any, limit: int = 60) -> str:
    """``repr(raw)`` cut to ``limit`` characters (``text.short_repr``), a mapping or list only named,
    so an error message never echoes a huge value."""
    return f"<a {type(raw).__name__}>" if isinstance(raw, (dict, list)) else short_repr(raw, limit)


def exact_int(raw: Any) -> int | None:
    """An integer parsed exactly ("9007199254740993" stays itself, not a float's neighbour);
    "1e3" and 5.0 are integers too. None when ``raw`` is not an integer."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.replace("_", "x"))  # "1_000" is not a manifest integer
        except ValueError:
            pass
    try:
        as_float = float(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(as_float) or as_float != int(as_float) or abs(as_float) >= 2**53:
        return None  # past 2**53 a float no longer holds every integer: write it out in digits
    return int(as_float)


def coerce(name: str, raw: Any) -> Any:
    """Convert a raw value (CSV string or YAML scalar) to the parameter's type, or raise ConfigError."""
    spec = PARAMS[name]
    if isinstance(raw, str):
        raw = raw.strip()
    if spec.kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"expected text, got {shown(raw)}")
        value: Any = raw if name == "preset" else raw.lower()  # choices are case-insensitive
    elif spec.kind is int:
        value = exact_int(raw)
        if value is None:
            raise ConfigError(f"expected an integer, got {shown(raw)}")
    else:
        if isinstance(raw, bool):
            raise ConfigError(f"expected a number, got {shown(raw)}")
        try:
            value = float(raw)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"expected a number, got {shown(raw)}") from None
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise ConfigError(f"expected a finite float32 number (|x| <= 3.4e38), got {shown(raw)}")
    if not spec.check(value):
        raise ConfigError(f"must be {spec.rule}, got {shown(raw)}")
    return value


class _NoAliasSafeLoader(yaml.SafeLoader):
    """safe_load without anchors/aliases: nested aliases expand exponentially (a "billion laughs"
    file of a few hundred bytes becomes gigabytes), and a config never needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in batch-ast files", event.start_mark
            )
        return super().compose_node(parent, index)


def parse_yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """Parse YAML safely (no tags, no aliases, at most MAX_CONFIG_BYTES); None/empty is {};
    anything but a mapping is a ConfigError."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: {len(text)} characters, more than the {MAX_CONFIG_BYTES} a config may have"
        )
    try:
        data = yaml.load(text, Loader=_NoAliasSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a YAML mapping, got {type(data).__name__}")
    return data


def load_config_file(path: str | Path, what: str) -> dict[str, Any]:
    """A user's YAML file (config, profile) as a mapping; every problem is one ConfigError that
    names the file: unreadable, too large (checked before reading), not UTF-8, not valid YAML."""
    path = Path(path)
    shown_path = short_path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{shown_path}: {size} bytes, more than the {MAX_CONFIG_BYTES} a {what} may have"
            )
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{shown_path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown_path}: {what} is not UTF-8 text (byte {exc.start})") from None
    return parse_yaml_mapping(text, f"{what} {shown_path}")


@dataclass(frozen=True)
class Config:
    """Resolved defaults plus the named presets available to manifest rows."""

    defaults: dict[str, Any]
    presets: dict[str, dict[str, Any]]

    def resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Layer a row's preset and overrides on the defaults; raise ConfigError on the first problem."""
        params = dict(self.defaults)
        preset = overrides.get("preset", params.get("preset", ""))
        if preset:
            if preset not in self.presets:
                raise ConfigError(
                    f"unknown preset {preset!r} (known: {', '.join(sorted(self.presets))})"
                )
            params.update(self.presets[preset])
        params.update(overrides)
        return params

    def params(self, overrides: Mapping[str, Any] | None = None, **more: Any) -> Params:
        """A row's validated ``Params``: ``resolve`` of ``overrides`` and ``more`` (raw or typed)."""
        return Params.from_mapping(self.resolve({**(overrides or {}), **more}))


def _validated(values: dict[str, Any], source: str) -> dict[str, Any]:
    out = {}
    for key, raw in values.items():
        if key not in PARAMS:
            raise ConfigError(f"{source}: unknown hyperparameter {shown(key)}")
        try:
            out[key] = coerce(key, raw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    return out


def load_config(path: str | Path | None = None) -> Config:
    """Load the package defaults and presets, then apply a user YAML file if one is given.

    The user file may hold ``defaults:`` and ``presets:`` sections, or be a flat mapping of
    hyperparameters (taken as defaults).
    """
    shipped = parse_yaml_mapping(
        resources.files("batch_ast").joinpath("defaults.yaml").read_text(), "defaults.yaml"
    )
    defaults = _validated(shipped["defaults"], "defaults.yaml")
    presets = {
        name: _validated(values, f"defaults.yaml preset {name}")
        for name, values in shipped.get("presets", {}).items()
    }
    if path is not None:
        path = Path(path)
        user = load_config_file(path, "config")
        if "defaults" in user or "presets" in user:
            extra = set(user) - {"defaults", "presets"}
            if extra:
                raise ConfigError(f"{path}: unknown section(s) {sorted(map(str, extra))}")
            for section in ("defaults", "presets"):
                if not isinstance(user.get(section) or {}, dict):
                    raise ConfigError(f"{path}: {section}: must be a mapping, got {shown(user[section])}")
            defaults.update(_validated(user.get("defaults") or {}, str(path)))
            for name, values in (user.get("presets") or {}).items():
                if not isinstance(values, dict):
                    raise ConfigError(f"{path}: preset {name!r} must be a mapping")
                presets[str(name)] = _validated(values, f"{path} preset {name}")
        else:
            defaults.update(_validated(user, str(path)))
    return Config(defaults=defaults, presets=presets)
