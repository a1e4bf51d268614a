"""Sandboxes: isolated machines with one persistent bash session each (see `base.Sandbox`)."""

from __future__ import annotations

from cwm_agent.sandbox.base import (
    OWNER_PID_LABEL,
    PROJECT_LABEL,
    RUN_ID_LABEL,
    ImageNotFoundError,
    RunResult,
    RunStatus,
    Sandbox,
    SandboxConfig,
    SandboxError,
)


def make_sandbox(config: SandboxConfig, client=None) -> Sandbox:
    """A sandbox for `config.backend` (not started yet: use it as a context manager, or call start())."""
    if config.backend == "local":
        from cwm_agent.sandbox.local import LocalSandbox

        return LocalSandbox(config)
    from cwm_agent.sandbox.docker import DockerSandbox

    return DockerSandbox(config, client=client)


__all__ = [
    "OWNER_PID_LABEL",
    "PROJECT_LABEL",
    "RUN_ID_LABEL",
    "ImageNotFoundError",
    "RunResult",
    "RunStatus",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "make_sandbox",
]
