"""ForagerAgent: mutate-fix tasks from any repository image (`generate.py`, `mutate.py`, `issue.py`,
`probe.py`), trajectories collected on them (`collect.py`), and training records (`export.py`)."""
