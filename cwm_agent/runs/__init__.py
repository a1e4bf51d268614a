"""Batch runs over many work items: the run folder, its manifest and lock, resume, the live display.

Filled in by the modules of this package; the format is documented in `cwm_agent.runs.folder`.
"""
