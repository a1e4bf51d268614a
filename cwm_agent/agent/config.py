"""Run configuration: one pydantic model per part, filled from YAML, overridden by the CLI.

Defaults are CWM's published SWE-bench settings and live here only. `cwm-agent config` prints
them as YAML, which is also the format `--config FILE` reads (any subset of the keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cwm_agent.errors import UserError
from cwm_agent.model.client import ModelConfig, SamplingParams
from cwm_agent.sandbox.base import SandboxConfig


class AgentConfig(BaseModel):
    """Limits of one episode."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(128, gt=0)
    """Model replies allowed; the last one ends the episode without running its tool."""
    context_size: int = Field(131_072, gt=0)
    """Tokens in the whole dialogue (prompt + replies) before the episode ends."""
    issue_max_tokens: int = Field(8_192, gt=0)
    """The task's problem statement is cut from the left (its end kept) to this many tokens."""
    observation_max_tokens: int = Field(32_768, gt=0)
    """One tool result is cut on the right to this many tokens."""
    reply_max_tokens: int = Field(65_536, gt=0)
    """Most tokens the model may write in one reply."""
    wall_clock_limit: float = Field(7_200.0, gt=0)
    """Seconds an episode may take in all (CWM's sandbox lifetime)."""
    strict_format: bool = False
    """End an issue-solving episode at its first malformed reply (CWM's evaluation answers them, with no
    limit on how many; its test-generation episode always ends at the first)."""
    reasoning: bool = True
    """Reasoning mode: the system prompt asks for `<think>` and each reply starts inside it."""
    token_ids: Literal["auto", "on", "off"] = "auto"
    """Send prompts as token ids built as CWM builds its context (each message's pieces tokenized on
    their own, replies' ids as sampled). auto: when the server takes id prompts and returns the reply's
    ids (vLLM >= 0.10.2), else text with a warning; on: required; off: always text."""


class RunConfig(BaseModel):
    """Everything a run needs besides the task."""

    model_config = ConfigDict(extra="forbid")

    agent: AgentConfig = Field(default_factory=AgentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    cwm_release: str | None = None
    """A checkout of CWM's release (github.com/facebookresearch/cwm): the model is shown CWM's own texts,
    read from it at run time, and the edit/create tools run its plugins. Also `--cwm-release` and the
    environment variable CWM_RELEASE. None: the project's own wording."""

    @model_validator(mode="after")
    def _loop_can_honour(self) -> RunConfig:
        """Values each part accepts alone but the agent loop cannot honour together: refused at start."""
        if self.sampling.n != 1:
            raise ValueError(
                f"sampling.n is {self.sampling.n}: the agent loop takes one reply per turn; "
                "for more samples per task run more rollouts"
            )
        agent = self.agent
        for key in ("reply_max_tokens", "issue_max_tokens"):
            if getattr(agent, key) >= agent.context_size:
                raise ValueError(
                    f"agent.{key} ({getattr(agent, key)}) must be below agent.context_size ({agent.context_size})"
                )
        return self


class ConfigError(UserError, ValueError):
    """A config file or override is wrong; the message names the key and the problem."""


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's complaint on one line, with where it was found."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then `overrides` (nested dicts, e.g. {"agent": {"max_turns": 10}})."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping (agent:, model:, sampling:, sandbox:)")
        data = loaded or {}
    data = merge(data, {k: v for k, v in (overrides or {}).items() if v})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}: {problems}") from None


def _problem(error: dict[str, Any]) -> str:
    """One validation error as `key.path: message` (a check across keys names its keys itself)."""
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {message}" if where else message


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
