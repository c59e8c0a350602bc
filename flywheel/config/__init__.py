"""The one YAML configuration of rl-flywheel, parsed into typed pydantic models.

Every section lives in its own module (``data``, ``train``, ``rewards``, ``release``); this module composes
them, expands ``${ENV_VAR}`` references, and turns validation failures into one error that names every bad
key path (``source.uri: must be a local folder or s3://bucket/prefix``).

Secrets (``SecretStr`` fields such as ``rewards.judge.api_key``) are never printed: ``render_config`` masks them,
and the password of a URI (``registry.tracking_uri: https://user:pass@host``); error messages show no value of a
key named like a secret and no URI password. Names that become files under the state dir (``project.name``,
``registry.model_name``) must be plain names, so no value climbs out of its folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from flywheel.config.agent import AgentConfig
from flywheel.config.data import SourceConfig, ValidateConfig
from flywheel.config.gateway import GatewayConfig
from flywheel.config.release import EvaluateConfig, RegistryConfig, ScheduleConfig, ServeConfig, check_name
from flywheel.config.rewards import RewardsConfig
from flywheel.config.train import ModelConfig, TinyBaseConfig, TrainConfig

__all__ = [
    "ConfigError", "FlywheelConfig", "ProjectConfig", "load_config", "redact_userinfo", "render_config",
    "SourceConfig", "ValidateConfig", "ModelConfig", "TinyBaseConfig", "TrainConfig", "RewardsConfig",
    "EvaluateConfig", "RegistryConfig", "ServeConfig", "ScheduleConfig", "AgentConfig", "GatewayConfig",
]


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectConfig(Strict):
    name: str = Field("support-bot", description="Use case name; the MLflow registered model and experiment are named "
                                                 "after it. A plain name (no '/', '\\' nor leading '.'): it names "
                                                 "files under the state dir.")
    state_dir: Path = Field(Path(".flywheel"), description="Folder for manifests, snapshots, quarantine, caches, "
                                                           "MLflow's SQLite store and checkpoints.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return check_name(v)


class FlywheelConfig(Strict):
    """The whole configuration. Every section has defaults, so an empty file is a valid config (the embedded demo)."""

    project: ProjectConfig = ProjectConfig()
    source: SourceConfig = SourceConfig()
    validation: ValidateConfig = Field(ValidateConfig(), alias="validate", description="The `validate:` section.")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    rewards: RewardsConfig = RewardsConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    serve: ServeConfig = ServeConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    agent: AgentConfig = AgentConfig()
    gateway: GatewayConfig = GatewayConfig()

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @property
    def state(self) -> Path:
        return Path(self.project.state_dir)

    @model_validator(mode="after")
    def _pii_names(self):
        """``validate.pii.extra_patterns`` names become the replacement ``[NAME]`` written into JSON columns."""
        for name in self.validation.pii.extra_patterns:
            if not _PII_NAME.fullmatch(name):
                raise ValueError(f"validate.pii.extra_patterns.{name}: a pattern name is letters, digits and '_' "
                                 f"(it becomes the replacement [{name.upper()}] inside JSON text)")
        return self


class ConfigError(ValueError):
    """A config that cannot be used; the message names each bad key path."""


_PII_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; a missing variable is an error naming the key."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable ${{{name}}} is not set")
        return _ENV.sub(sub, node)
    return node


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = "validate" if part == "validation" else part
            out += f".{part}" if out else str(part)
    return out


def config_from_dict(raw: dict[str, Any] | None, where: str = "<config>") -> FlywheelConfig:
    raw = _expand_env(raw or {})
    try:
        return FlywheelConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = _loc(err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{key}: unknown key")
                continue
            shown = err.get("input")
            secret = any(w in key.lower() for w in ("key", "secret", "token", "password"))
            got = "" if secret or isinstance(shown, (dict, list)) else f", got {redact_userinfo(shown)!r}"
            if not key:  # a check across sections: its message names the key
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            lines.append(f"{key}: {redact_userinfo(err['msg'])}{got}")
        raise ConfigError(f"{where}: invalid configuration\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FlywheelConfig:
    """Load ``path`` (YAML) or the embedded defaults, then apply dotted ``overrides`` ({"source.uri": "..."})."""
    raw: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config_from_dict(raw, where)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


def redact_userinfo(value: Any) -> Any:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` in a string (a password in a URI such as
    ``registry.tracking_uri`` or ``rewards.judge.base_url``); anything else unchanged."""
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", value) if isinstance(value, str) else value


def _mask(node: Any) -> Any:
    if isinstance(node, SecretStr):
        return "**********" if node.get_secret_value() else ""
    if isinstance(node, str):
        return redact_userinfo(node)
    if isinstance(node, dict):
        return {k: _mask(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v) for v in node]
    if isinstance(node, Path):
        return str(node)
    return node


def render_config(cfg: FlywheelConfig) -> str:
    """The effective config as YAML, defaults filled in, secrets masked."""
    data = _mask(cfg.model_dump(by_alias=True, mode="python"))
    return yaml.safe_dump(data, sort_keys=False)


def _fields(model: type[BaseModel], prefix: str):
    """Yield (dotted key, type, default, description) for every leaf field of a config section."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{field.alias or name}" if prefix else (field.alias or name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, key)
            continue
        if field.default_factory is not None:
            default = field.default_factory()
        else:
            default = field.default
        default = _mask(default)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        type_name = getattr(ann, "__name__", None) if isinstance(ann, type) else None
        type_name = type_name or re.sub(r"\b(?:[a-z_]+\.)+(?=[A-Za-z])", "", str(ann))
        yield key, type_name, default, field.description or ""


def render_reference() -> str:
    """The configuration reference as Markdown tables, one per section (the README embeds it)."""
    out = []
    for section, field in FlywheelConfig.model_fields.items():
        name = field.alias or section
        out.append(f"#### `{name}`\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for key, type_name, default, doc in _fields(field.annotation, name):
            required = repr(default) == "PydanticUndefined"
            shown = "required" if required else f"`{default!r}`"
            cells = [f"`{key}`", type_name.replace("|", "or"), shown.replace("|", "/"), doc.replace("|", "/")]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
