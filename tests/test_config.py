"""The run configuration a user writes: the README's example, and `cwm-agent config` round trips."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cwm_agent.agent.config import ConfigError, RunConfig, load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_is_a_valid_config(tmp_path):
    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    path = tmp_path / "c.yaml"
    path.write_text(block)
    config = load_config(path)
    assert config.agent.max_turns == 64 and config.sampling.seed == 7 and config.sandbox.memory == "8g"
    assert config.agent.context_size == 131_072  # untouched keys keep CWM's defaults


def test_printed_defaults_load_back_unchanged(tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "cwm_agent.cli", "config"], capture_output=True, text=True, check=True
    ).stdout
    path = tmp_path / "defaults.yaml"
    path.write_text(printed)
    assert load_config(path) == RunConfig()
    assert yaml.safe_load(printed)["sampling"]["top_p"] == 0.95


def test_a_misspelt_key_names_itself(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("agent: {max_turn: 3}\n")
    with pytest.raises(ConfigError, match="agent.max_turn"):
        load_config(path)
