"""cwm-agent: run Meta's Code World Model as a software-engineering agent."""

__version__ = "0.1.0"
