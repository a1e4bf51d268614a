"""`swebench run`: the agent over many SWE-bench instances (K patch and T test rollouts each), resumable.

The SWE-bench use of `cwm_agent.runs`: the dataset becomes work items (instance, kind, rollout), the
generic driver runs them into the run folder, and this module adds the predictions:
- `preds.jsonl`: the official format (instance_id, model_name_or_path, model_patch) for rollout 0 of
  kind patch, in dataset order;
- `preds/rollout-<k>.jsonl`: the same for every rollout k, when rollouts > 1.
As CWM grades, `model_patch` is the submission only of an episode that ended after a successful
submission; an episode ended by a turn, context or time limit gets "" (its submission stays in
results.jsonl and its trajectory), unless `grade_unfinished`.

Predictions are appended as items finish and rewritten from results.jsonl at the end (and at every
resume), so they always agree with the results.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from cwm_agent.agent.config import RunConfig
from cwm_agent.errors import UserError
from cwm_agent.model.client import ModelError
from cwm_agent.model.endpoints import EndpointPool
from cwm_agent.runs.batch import BatchRun
from cwm_agent.runs.display import LiveDisplay
from cwm_agent.runs.executor import LocalExecutor, work_runner
from cwm_agent.runs.folder import DatasetInfo, Manifest, ModelInfo, RunFolder, ids_hash, row_hash, write_if_changed
from cwm_agent.runs.progress import RunProgress
from cwm_agent.runs.work import ImageLookup, ItemRecord, WorkItem, item_id_for
from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.images import candidate_images, official_image_name
from cwm_agent.swebench.tasks import instance_task


class Prediction(BaseModel):
    instance_id: str
    model_name_or_path: str
    model_patch: str


class DuplicateInstanceError(UserError):
    """The dataset lists an instance id more than once."""


def check_unique(instances: list[SWEBenchInstance], source: str) -> None:
    seen: set[str] = set()
    for instance in instances:
        if instance.instance_id in seen:
            raise DuplicateInstanceError(
                f"{source} lists {instance.instance_id} more than once; each instance must appear once."
            )
        seen.add(instance.instance_id)


def image_lookup(instance: SWEBenchInstance, registry_prefix: str | None, allow_pull: bool) -> ImageLookup:
    """Where the instance's image may come from (the names `swebench.images.resolve_image` tries)."""
    names = candidate_images(instance, registry_prefix)
    official = official_image_name(instance.instance_id)
    mirrored = [n for n in names if registry_prefix and n.endswith("/" + official)]
    pullable = list(dict.fromkeys(mirrored + [official] + ([instance.image] if instance.image else [])))
    if instance.repo.startswith("cwm-local/"):
        how = "build it with `cwm-agent swebench build-local`"
    else:
        how = (
            f"pull it (`docker pull {official}`, or rerun with --allow-pull [--registry-prefix MIRROR]) or build it "
            f"with the official harness (`python -m swebench.harness.prepare_images --instance_ids "
            f"{instance.instance_id}`)"
        )
    return ImageLookup(candidates=names, pullable=pullable, allow_pull=allow_pull, how_to_get=how)


def work_items(
    instances: list[SWEBenchInstance],
    rollouts: int = 1,
    test_rollouts: int = 0,
    seed: int | None = None,
    registry_prefix: str | None = None,
    allow_pull: bool = False,
) -> list[WorkItem]:
    """Every (instance, kind, rollout) in the run's order: per instance, its patch rollouts then its test ones."""
    items = []
    for instance in instances:
        lookup = image_lookup(instance, registry_prefix, allow_pull)
        for kind, count in (("patch", rollouts), ("test", test_rollouts)):
            for k in range(count):
                items.append(
                    WorkItem(
                        item_id=item_id_for(instance.instance_id, kind, k),
                        instance_id=instance.instance_id,
                        kind=kind,
                        rollout=k,
                        seed=None if seed is None else seed + k,
                        task=instance_task(instance, image=None, kind=kind),
                        image=lookup,
                    )
                )
    return items


@dataclass
class SWEBenchRun:
    """The settings of one `swebench run` (what the CLI collected)."""

    instances: list[SWEBenchInstance]
    config: RunConfig
    output: Path
    dataset_source: str
    dataset_split: str | None = None
    filters: dict | None = None
    workers: int = 4
    rollouts: int = 1
    test_rollouts: int = 0
    seed: int | None = None
    grade_unfinished: bool = False
    rerun_errors: bool = False
    allow_mixed: bool = False
    registry_prefix: str | None = None
    allow_pull: bool = False
    run_id: str = ""
    urls: list[str] | None = None
    """Model servers of the same model (None: the config's `model.url`); rollouts are spread over them."""
    executor: Any = None
    """Where items run (`cwm_agent.runs.executor`); None: this process."""

    def __post_init__(self) -> None:
        self.run_id = self.run_id or uuid.uuid4().hex[:12]
        self.folder = RunFolder(self.output)

    def manifest(self, model_id: str, config: RunConfig, urls: list[str] | None = None) -> Manifest:
        return Manifest(
            kind="swebench",
            run_ids=[self.run_id],
            dataset=DatasetInfo(
                source=self.dataset_source,
                split=self.dataset_split,
                filters=self.filters or {},
                instance_count=len(self.instances),
                ids_hash=ids_hash(i.instance_id for i in self.instances),
                rows={i.instance_id: row_hash(i.as_dict()) for i in self.instances},
            ),
            model=ModelInfo(id=model_id, urls=urls or [config.model.url]),
            config=config.model_dump(mode="json"),
            rollouts=self.rollouts,
            test_rollouts=self.test_rollouts,
            seed=self.seed,
            grade_unfinished=self.grade_unfinished,
        )

    def predictions_path(self, rollout: int) -> Path:
        return self.output / "preds.jsonl" if rollout == 0 else self.output / "preds" / f"rollout-{rollout}.jsonl"

    def prediction(self, record: ItemRecord, model_id: str) -> Prediction:
        graded = record.graded or (self.grade_unfinished and record.submission is not None)
        patch = (record.submission or "") if graded else ""
        return Prediction(instance_id=record.instance_id, model_name_or_path=model_id, model_patch=patch)

    def write_predictions(self, records: list[ItemRecord], model_id: str) -> dict[int, Path]:
        """preds.jsonl (rollout 0) and, with rollouts > 1, preds/rollout-k.jsonl, from the results."""
        written = {}
        rollouts = max([self.rollouts, *(r.rollout + 1 for r in records if r.kind == "patch")])
        for k in range(rollouts):
            lines = [self.prediction(r, model_id) for r in records if r.kind == "patch" and r.rollout == k]
            path = self.predictions_path(k)
            if lines or path.exists():
                write_if_changed(path, "".join(p.model_dump_json() + "\n" for p in lines))
                written[k] = path
        return written

    async def run(
        self,
        display_factory: Callable[[RunProgress], LiveDisplay] | None = None,
        announce: Callable[[BatchRun], None] | None = None,
    ) -> SWEBenchResult:
        """Run what is left; the folder is locked for the whole run. `announce` is called once the folder
        is taken (before any item starts), e.g. to print the run id."""
        announce = announce or (lambda batch: None)
        from cwm_agent.agent.run import size_thread_pool

        items = work_items(
            self.instances, self.rollouts, self.test_rollouts, self.seed, self.registry_prefix, self.allow_pull
        )
        batch = BatchRun(self.folder, items, self.config, self.run_id, self.workers, self.rerun_errors)
        old = self.folder.read_manifest()
        if old is not None and not batch.todo():
            # Nothing to run: no model server is needed, but the settings must still match.
            self.folder.open(
                self.manifest(old.model.id, self.config, old.model.urls),
                self.allow_mixed,
                write=old.grade_unfinished != self.grade_unfinished,  # the predictions change with it
            )
            try:
                announce(batch)
                self._on_finish(batch, old.model.id)
                await batch.run(None, None)
            finally:
                self.folder.close()
            return SWEBenchResult(batch.progress, self._written, self.run_id, self.folder)
        size_thread_pool(self.workers)
        urls = self.urls or [self.config.model.url]
        pool = EndpointPool(self.config.model, urls)
        try:
            # Asked even when the config names the model: an unreachable server fails here in seconds,
            # before any file is written, not once per instance after minutes of retries.
            model_id = await pool.check()
        finally:
            await pool.aclose()
        config = self.config.model_copy(
            update={"model": self.config.model.model_copy(update={"model": model_id, "url": pool.urls[0]})}
        )
        manifest = self.manifest(model_id, config, pool.urls)
        _, diffs = self.folder.open(manifest, self.allow_mixed)
        executor = self.executor or LocalExecutor()
        try:
            if old is None:
                self.adopt_older_folder()
            images = sorted({name for item in items if item.image for name in item.image.candidates})
            await executor.open(self.output, endpoints=len(pool.urls), images=images)
            batch.config = config
            batch.runner = work_runner(executor, pool.urls, self.output)
            batch.workers = executor.capacity or self.workers
            batch.server_check = lambda: servers_gone(config.model, pool.urls)
            if diffs:
                batch.settings = {
                    "model": model_id,
                    "differences": diffs,
                    **manifest.model_dump(mode="json", include={"config", "rollouts", "test_rollouts", "seed"}),
                }
            announce(batch)
            self._on_finish(batch, model_id)
            await batch.run(None, display_factory)
        finally:
            try:
                await executor.close()
            finally:
                self.folder.close()
        return SWEBenchResult(batch.progress, self._written, self.run_id, self.folder)

    def adopt_older_folder(self) -> None:
        """A folder written before run folders had a manifest kept each patch only in preds.jsonl: copy
        them into the results (as `submission`) before the predictions are rewritten from the results."""
        results = self.folder.read_results()
        if not any(r.submission is None and r.status == "submitted" for r in results.values()):
            return
        patches: dict[str, str] = {}
        path = self.predictions_path(0)
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    prediction = Prediction.model_validate_json(line)
                except ValueError:
                    continue
                patches[prediction.instance_id] = prediction.model_patch
        lines = []
        for record in results.values():
            patch = patches.get(record.instance_id)
            if record.submission is None and record.item_id == record.instance_id and patch:
                record = record.model_copy(update={"submission": patch})
            lines.append(record.model_dump_json() + "\n")
        write_if_changed(self.folder.results_path, "".join(lines))

    def _on_finish(self, batch: BatchRun, model_id: str) -> None:
        """Predictions follow the results: appended as items finish, rewritten from the results at the end."""
        self._written: dict[int, Path] = {}
        # Repairs what a kill between a result line and its prediction left (the results are the truth).
        self.write_predictions(list(batch.results().values()), model_id)

        def on_record(record: ItemRecord) -> None:
            if record.kind == "patch":
                path = self.predictions_path(record.rollout)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(self.prediction(record, model_id).model_dump_json() + "\n")

        def on_finish(records: list[ItemRecord]) -> None:
            self._written = self.write_predictions(records, model_id)

        batch.on_record = on_record
        batch.on_finish = on_finish


async def servers_gone(config: Any, urls: list[str]) -> str | None:
    """None when every model server answers, else which one does not and why."""
    pool = EndpointPool(config, urls)
    try:
        await pool.check()
    except ModelError as exc:
        which = "the model server" if len(urls) == 1 else "a model server"
        return f"{which} stopped answering: {exc}"
    finally:
        await pool.aclose()
    return None


@dataclass
class SWEBenchResult:
    progress: RunProgress
    predictions: dict[int, Path]
    """rollout -> the predictions file written."""
    run_id: str
    folder: RunFolder

    def submitted(self) -> int:
        """Non-empty predictions of rollout 0."""
        path = self.predictions.get(0)
        if path is None or not path.exists():
            return 0
        lines = path.read_text(encoding="utf-8").splitlines()
        return sum(1 for line in lines if Prediction.model_validate_json(line).model_patch)
