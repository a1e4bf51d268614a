"""Batch runs over many work items: the run folder, its manifest and lock, resume, the live display.

A batch command (`swebench run`, `forage run`, test-time scaling) turns its dataset into
`work.WorkItem`s (instance, kind, rollout), and `batch.BatchRun` runs them through an executor
(`executor.py`: this process, or Ray) into one run folder, which only the driver writes:

```
RUN_DIR/
  run.json          manifest written when a run starts (`folder.Manifest`): run ids, created_at, harness
                    version, dataset (source, filters, instance count, row hashes), model (id, urls), the
                    RunConfig, rollouts K, test_rollouts T, seed, grade_unfinished
  run.lock          held (flock; the kernel drops it when the holder dies) while a run writes the folder
  results.jsonl     one `work.ItemRecord` per finished work item: instance_id, kind ("patch"|"test"),
                    rollout (0-based), item_id, status, graded, detail, submission, turns, tokens {prompt,
                    completion, cached, context}, model_seconds, tool_seconds, elapsed, endpoint (+ settings,
                    in a run continued with --allow-mixed)
  preds.jsonl       official predictions (instance_id, model_name_or_path, model_patch) of rollout 0 of kind
                    patch; model_patch is "" for an episode CWM would not grade, unless --grade-unfinished
  preds/rollout-<k>.jsonl        the same for every rollout k, when rollouts > 1
  trajectories/<item_id>.jsonl   item_id = instance_id for (patch, rollout 0); else "<instance_id>.<kind>-<k>"
  eval/             `swebench eval` output of preds.jsonl
  logs/harness.log  full tracebacks of unexpected errors (made on the first one)
```

Resume: a rerun skips the items with a result line (errored ones too, unless asked to rerun them)
and refuses a folder holding a run with other settings (model, config, dataset, rollouts), naming
the first difference. A run with K=1 and T=0 looks as a single-rollout run always did, plus run.json.
"""
