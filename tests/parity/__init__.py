"""Parity tests: CWM's released environment class run beside our agent loop on scripted episodes."""
