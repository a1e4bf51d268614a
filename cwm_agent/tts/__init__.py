"""Test-time scaling: many rollouts per instance, candidates executed against tests, one patch picked.

The pipeline over a run folder written by `swebench run --rollouts K --test-rollouts T`:

- `candidates.py`: the rollouts of each instance read back (patches from `preds/rollout-<k>.jsonl`,
  generated tests from the `test` lines of `results.jsonl`), patches normalised and grouped;
- `testgen.py`: the static checks and the verdict of a generated test's output;
- `regression.py`: which of the repository's own tests to run, how, and how to read their log;
- `execute.py`: every distinct patch (and the unpatched repository) in one fresh container each,
  against the regression tests and the generated tests, results cached in `RUN_DIR/tts/cache.jsonl`;
- `strategies.py`: a strategy is one function from an instance's candidates and their results to a
  choice (`majority`, `cwm`, or your own: `module:attribute`);
- `select.py`: a predictions file with one patch per instance and a why-record per choice;
- `report.py`: pass@1, pass@k, each strategy's accuracy and its gap to pass@k, tokens and
  container-seconds per stage.
"""
