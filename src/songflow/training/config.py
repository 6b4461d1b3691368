"""Training configs: nested dataclasses loaded from YAML/JSON, with ``--set a.b=value`` overrides.

One mechanism for every trainer: a config class is a dataclass that inherits :class:`ConfigBase`
(:class:`TrainConfig` for the DiT, the codec trainers' ``VocoderTrainConfig``/``DCAETrainConfig``). No Hydra,
no class paths: every section is a plain dataclass, unknown keys are rejected with their dotted name
(:class:`~songflow.errors.ConfigError`), and override values are parsed as YAML scalars then coerced to the
field's type; dotted overrides reach into mapping fields too (``model_overrides.dims=[16]``), where new
keys are allowed. Defaults follow the released trainer (ACE-Step v1); the ``v15`` section holds what only
ACE-Step 1.5 checkpoints use (the family comes from ``model.checkpoint_dir``, see
:mod:`songflow.training.v15`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from songflow.checkpoint.lora import OFFICIAL_TARGET_MODULES
from songflow.errors import ConfigError

C = TypeVar("C", bound="ConfigBase")

LR_SCHEDULES = ("linear", "cosine")
V15_TIMESTEPS = ("auto", "turbo", "logit_normal")
V15_CONDITIONS = ("pipeline", "official")


class ConfigBase:
    """Mixin of every training config (a dataclass, frozen or not): dict/file round trip and overrides."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "") -> C:
        """Build from a mapping; unknown keys and wrong types are :class:`ConfigError` (``source`` names
        where the mapping came from in the message)."""
        try:
            return _build(cls, data, "")
        except ConfigError as exc:
            if not source:
                raise
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_file(
        cls: type[C], path: str | Path, overrides: Iterable[str] | Mapping[str, Any] | None = None
    ) -> C:
        """A YAML/JSON file (:func:`read_config_file`) with ``overrides`` applied
        (:func:`apply_overrides`)."""
        cfg = cls.from_dict(read_config_file(path))
        return apply_overrides(cfg, overrides or [])

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]

    def to_file(self, path: str | Path) -> None:
        from songflow.fileio import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


@dataclass
class SSLModelConfig:
    """One REPA target: a local HF audio model folder (``AutoModel.from_pretrained``), its input recipe."""

    path: str = ""
    sample_rate_hz: int = 16000
    chunk_seconds: float = 30.0


@dataclass
class DataConfig:
    # v1: official-format HF dataset (datasets.load_from_disk); 1.5: that too (or a `songflow corpus` folder
    # holding dataset/), the official 1.5 dataset JSON, or a folder of audio files with caption/lyrics
    # sidecars (songflow.training.v15_data)
    dataset_path: str = ""
    cache_dir: str = ""  # preprocessed latents/text/lyrics shards; default <output_dir>/cache
    batch_size: int = 1
    num_workers: int = 0
    shuffle: bool = True
    max_seconds: float = 240.0
    min_seconds: float = 3.0
    shard_size: int = 256


@dataclass
class ModelConfig:
    checkpoint_dir: str = ""  # official four-folder checkpoint (the base model)
    gradient_checkpointing: bool = False
    precision: str = "32"  # "32" or "bf16-mixed" (autocast on CUDA; on CPU only with AVX512-BF16/AMX)

    def __post_init__(self) -> None:
        if self.precision not in ("32", "bf16-mixed"):
            raise ConfigError(f"model.precision must be '32' or 'bf16-mixed', got {self.precision!r}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.8, 0.9)
    eps: float = 1e-8
    warmup_steps: int = 10
    max_steps: int = 2000
    grad_clip: float = 0.5
    accumulate: int = 1
    # "linear": warm-up from 0 then linear decay to 0 at max_steps (v1); "cosine": the official 1.5 trainer's
    # warm-up from 0.1 x lr over min(warmup_steps, max_steps // 10) steps, then cosine down to 0.01 x lr
    lr_schedule: str = "linear"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must hold two numbers, got {self.betas}")
        if self.max_steps < 1 or self.accumulate < 1 or self.warmup_steps < 0:
            raise ConfigError("optim.max_steps and optim.accumulate must be >= 1, warmup_steps >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"optim.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")


@dataclass
class LoraConfig:
    enabled: bool = False
    name: str = "default"
    r: int = 256
    alpha: float = 32.0
    use_rslora: bool = True
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(OFFICIAL_TARGET_MODULES))


@dataclass
class RepaConfig:
    enabled: bool = False
    block: int = 8  # DiT block whose output feeds the projectors
    coeff: float = 1.0
    ssl_models: list[SSLModelConfig] = field(default_factory=list)  # one per projector, in order


@dataclass
class ScheduleConfig:
    shift: float = 3.0
    sigma_max: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    p_text_dropout: float = 0.15
    p_lyric_dropout: float = 0.15
    p_speaker_dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("p_text_dropout", "p_lyric_dropout", "p_speaker_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"schedule.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SamplesConfig:
    """Audio rendered with the weights of every checkpoint save (``<output_dir>/samples/step=N/``)."""

    tags: list[str] = field(default_factory=list)  # one clip per entry; empty = no renders
    lyrics: list[str] = field(default_factory=list)  # same length as tags, or empty for "[inst]"
    duration_s: float = 10.0
    steps: int = 27
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lyrics and len(self.lyrics) != len(self.tags):
            raise ConfigError(
                f"samples.lyrics holds {len(self.lyrics)} entries for {len(self.tags)} samples.tags"
            )
        if self.duration_s <= 0 or self.steps < 1:
            raise ConfigError("samples.duration_s must be > 0 and samples.steps >= 1")


@dataclass
class V15Config:
    """ACE-Step 1.5 only (a v1 checkpoint refuses non-default values). Facts: docs/acestep_v15.md#training.

    ``timesteps``: ``"turbo"`` draws uniformly from the 8 turbo timesteps of ``schedule.shift`` (the official
    LoRA trainer), ``"logit_normal"`` the max of two ``sigmoid(N(mu, sigma))`` draws (the model's own
    training forward); ``"auto"``: turbo on a turbo checkpoint, logit-normal on base/sft.
    ``p_condition_dropout``: share of rows whose encoder states become ``null_condition_emb`` (None: 0 with
    turbo timesteps, as the official LoRA trainer, 0.15 with logit-normal, as the model's forward).
    ``conditions``: ``"pipeline"`` caches the conditions songflow's 1.5 pipeline builds at generation time
    (unpadded prompts, lyric prompt with its language header, the silence latent as timbre reference);
    ``"official"`` those of the official preprocessing (prompts padded to 256 / 512 tokens, bare lyrics,
    a one-frame zero reference).
    """

    timesteps: str = "auto"
    timestep_mu: float | None = None  # None: the checkpoint config's timestep_mu (-0.4)
    timestep_sigma: float | None = None  # None: the checkpoint config's timestep_sigma (1.0)
    p_condition_dropout: float | None = None
    conditions: str = "pipeline"

    def __post_init__(self) -> None:
        if self.timesteps not in V15_TIMESTEPS:
            raise ConfigError(f"v15.timesteps must be one of {V15_TIMESTEPS}, got {self.timesteps!r}")
        if self.conditions not in V15_CONDITIONS:
            raise ConfigError(f"v15.conditions must be one of {V15_CONDITIONS}, got {self.conditions!r}")
        for name in ("timestep_mu", "timestep_sigma", "p_condition_dropout"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"v15.{name} must be a number or null, got {value!r}")
        p = self.p_condition_dropout
        if p is not None and not 0.0 <= p <= 1.0:
            raise ConfigError(f"v15.p_condition_dropout must be in [0, 1], got {p}")
        if self.timestep_sigma is not None and self.timestep_sigma <= 0:
            raise ConfigError(f"v15.timestep_sigma must be > 0, got {self.timestep_sigma}")


@dataclass
class TrainConfig(ConfigBase):
    output_dir: str = "exps/run"
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N (DDP: set by torchrun's LOCAL_RANK)
    log_every: int = 1
    save_every: int = 2000
    keep_last: int = 2  # resumable checkpoints kept
    resume_from: str = ""  # "" | "last" | a checkpoints/step=N folder
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    repa: RepaConfig = field(default_factory=RepaConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    v15: V15Config = field(default_factory=V15Config)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file holding a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train config not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml/json raise several types
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at top level")
    return data


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _build(hint, value, key + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            out = hint(float(value)) if hint is int and not isinstance(value, str) else hint(value)
        except ValueError as exc:
            raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}") from exc
        if hint is int and float(value) != out:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return out
    if hint is str:
        return "" if value is None else str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + str(k) for k in unknown]}; valid keys here: "
            f"{[prefix + n for n in names]}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid {prefix.rstrip('.') or 'config'}: {exc}") from exc


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``: the value parsed as a YAML scalar/list (so JSON
    works too: ``[0.8, 0.99]``, ``true``, ``"quoted"``), kept as text when it does not parse."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _override_items(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    if isinstance(overrides, Mapping):
        return [(str(k), v, f"{k}={v!r}") for k, v in overrides.items()]
    return [(*parse_override(item), item) for item in overrides]


def _is_mapping_hint(hint: Any) -> bool:
    return hint is dict or typing.get_origin(hint) in (dict, Mapping)


def _set_dotted(data: dict[str, Any], cls: type, key: str, value: Any, item: str) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"``, checked against the dataclass ``cls``: every part
    must name a field, except inside a mapping field, where missing keys are created."""
    node, hint = data, cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        mapping = _is_mapping_hint(hint)
        if not mapping and not (dataclasses.is_dataclass(hint) and part in node):
            raise ConfigError(f"unknown config key {here!r} (in override {item!r})")
        if i == len(parts) - 1:
            node[part] = value
            return
        if mapping:
            child, hint = node.setdefault(part, {}), dict
        else:
            child, hint = node[part], _hints(hint)[part]
        if not isinstance(child, dict):
            raise ConfigError(f"unknown config key {here!r} (in override {item!r})")
        node = child


def apply_overrides(cfg: C, overrides: Iterable[str] | Mapping[str, Any]) -> C:
    """A new config of ``cfg``'s class with ``["optim.lr=3e-4", "lora.enabled=true", ...]`` applied
    (:func:`parse_override`), or with ``{"optim.lr": 3e-4, ...}`` (values already parsed)."""
    data = dataclasses.asdict(cfg)  # type: ignore[call-overload]
    for key, value, item in _override_items(overrides):
        _set_dotted(data, type(cfg), key, value, item)
    return type(cfg).from_dict(data)
