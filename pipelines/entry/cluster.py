"""Edits on Ray workers: a batch on many GPUs, and the page's edits sent to a cluster.

A worker (`EditWorker`, a Ray actor holding one GPU, or one CPU where the cluster has none) loads
the models once, on its first edit or on `ready()`, and keeps them. A process keeps one pool of
workers (`get_workers`) for all its batches and page edits. The driver hands each worker
one row at a time and the next as soon as it finishes, so fast and slow rows balance themselves.
An edit depends only on its request and seed, never on which worker ran it or how many there are.

    cluster.run_tasks(tasks, settings, batch.run_task, workers=2)   # batch: a local cluster of 2 workers
    cluster.run_tasks(tasks, settings, batch.run_task, address="ray://head:10001")
    cluster.run_edit_remote(request, settings)              # the page, with BACKDROP_RAY_ADDRESS

Workers read photos and write outputs at the paths they are given, and import Backdrop from the
driver's folder: on a multi-machine cluster, every node needs Backdrop, the weights and the batch's
folders at the same paths (one container image and a shared volume, as KubeRay sets up).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from pipelines.errors import one_line
from pipelines.settings import ROOT, Settings
from pipelines.types import EditRequest, EditResult


class EditWorker:
    """One worker: runs edits one at a time, keeping the models of each settings loaded (cached by
    the stages' loaders in the worker's process). Settings come with every call, so one pool of
    workers serves every batch and the page of this process."""

    def __init__(self) -> None:
        self._busy = threading.Lock()  # one edit at a time on this GPU; cancel() runs beside it
        self._cancel: dict[int, threading.Event] = {}

    def ready(self, settings: Settings) -> float:
        """Load SDXL and SAM now (the first edit would otherwise); returns the seconds it took."""
        import time

        from pipelines import libraries, prompting
        from pipelines.diffusion import sdxl_models
        from pipelines.masks import sam_models

        start = time.perf_counter()
        libraries.ensure_imported()  # a worker runs two calls at once (max_concurrency): see libraries.py
        sdxl_models.load_sdxl_from_settings(settings)
        sam_models.get_predictor(settings)
        prompting.sdxl_tokenizers(settings)
        return time.perf_counter() - start

    def run_task(self, run: Callable[[Any, Settings], dict[str, Any]], task, settings: Settings) -> dict[str, Any]:
        """One batch row -> its results.jsonl record: `run(task, settings)`, where `run` is
        `batch.run_task` (Ray sends it by reference; the batch imports this module, not the reverse)."""
        from pipelines import libraries

        libraries.ensure_imported()
        with self._busy:
            return run(task, settings)

    def run_request(self, request: EditRequest, settings: Settings, job: int) -> EditResult:
        """One edit from the page; `cancel(job)` stops it at the next diffusion step."""
        from pipelines import libraries
        from pipelines.editing import run_edit

        libraries.ensure_imported()
        event = self._cancel.setdefault(job, threading.Event())
        try:
            with self._busy:
                return run_edit(request, settings, should_cancel=event.is_set)
        finally:
            self._cancel.pop(job, None)

    def cancel(self, job: int) -> None:
        self._cancel.setdefault(job, threading.Event()).set()


def connect(address: str | None = None, **init_options: Any) -> None:
    """Join the cluster at `address`, or start a local one (one GPU per worker when there are GPUs).

    Does nothing when this process is already connected. `init_options` go to `ray.init` (tests
    keep the local cluster small).
    """
    ray = _ray()
    if ray.is_initialized():
        return
    # Workers import Backdrop from the same folder as this process (see the module docstring), and
    # whatever else this process's PYTHONPATH adds (a SAM variant registered by a site module).
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, **init_options)
        return
    import torch

    options = {"num_gpus": torch.cuda.device_count(), "include_dashboard": False, "log_to_driver": False}
    ray.init(runtime_env=runtime_env, **(options | init_options))


def _worker_kind(resources: dict[str, float]) -> str:
    """What each worker takes in a cluster with these resources: "GPU" (one each), or "CPU" without GPUs."""
    return "GPU" if resources.get("GPU", 0) >= 1 else "CPU"


def default_workers() -> int:
    """One worker per GPU in the cluster, or one when it has none."""
    resources = _ray().cluster_resources()
    return int(resources["GPU"]) if _worker_kind(resources) == "GPU" else 1


_POOL_LOCK = threading.Lock()
# This process's workers, in the order they started, and how many edits each has been sent.
_BUSY: dict[Any, int] = {}
_JOBS = itertools.count()


def get_workers(count: int | None = None) -> list:
    """`count` workers (default: one per GPU) of this process's pool, started when missing.

    Each worker takes one GPU, or one CPU in a cluster without GPUs. They live as long as this
    process is connected, so models are loaded once per worker, not once per batch or edit.
    """
    ray = _ray()
    count = count or default_workers()
    with _POOL_LOCK:
        if len(_BUSY) < count:
            gpus = _worker_kind(ray.cluster_resources()) == "GPU"
            # A worker that dies (out of memory, lost node) is restarted; its edit then fails.
            actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_restarts=2,
                               max_concurrency=2)(EditWorker)
            for _ in range(count - len(_BUSY)):
                _BUSY[actor.remote()] = 0
        return list(_BUSY)[:count]


def stop_workers() -> None:
    """End this process's workers (their GPUs become free for others)."""
    ray = _ray()
    with _POOL_LOCK:
        for actor in _BUSY:
            ray.kill(actor)
        _BUSY.clear()


def run_tasks(tasks: list, settings: Settings, run: Callable[[Any, Settings], dict[str, Any]],
              workers: int | None = None, address: str | None = None) -> Iterator[dict[str, Any]]:
    """Run batch tasks on Ray workers; yields each row's record as it finishes.

    Each worker holds one row at a time and gets the next from the queue when it is done.
    A worker that crashes fails its row (recorded with `task.record`) and the others go on.

    Args:
        tasks: `batch.Task`s.
        run: what a worker does with one (`batch.run_task`), returning its record.
    """
    ray = _ray()
    connect(address)
    if address is None and workers:
        # More workers than a local machine has GPUs (or CPUs) would wait for them forever.
        resources = ray.cluster_resources()
        kind = _worker_kind(resources)
        if workers > resources.get(kind, 0):
            raise ValueError(f"{workers} workers need {workers} {kind}s; this machine has {int(resources.get(kind, 0))}")
    actors = get_workers(workers)
    queue = deque(tasks)
    pending: dict[Any, tuple[Any, Any]] = {}

    def submit(actor) -> None:
        if queue:
            task = queue.popleft()
            pending[actor.run_task.remote(run, task, settings)] = (actor, task)

    for actor in actors:
        submit(actor)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, task = pending.pop(ref)
        try:
            record = ray.get(ref)
        except ray.exceptions.RayError as exc:
            record = task.record("failed", error=f"the worker failed: {one_line(exc)}")
        submit(actor)
        yield record


# --- the page's edits --------------------------------------------------------------------------

def run_edit_remote(request: EditRequest, settings: Settings,
                    on_progress: Callable[[str, int, int, Any], None] | None = None,
                    should_cancel: Callable[[], bool] | None = None) -> EditResult:
    """`editing.run_edit` on the least busy worker of the cluster at `settings.ray_address`.

    The page keeps its clicks, mood and prompt local and sends the finished request (with its
    chosen `subject`, so the worker needs no SAM). The worker saves the PNGs in its own output
    folder; the returned result holds the images, so the page shows them wherever that is.

    Args:
        request: the edit, as for `run_edit`.
        settings: `ray_address` names the cluster; the rest is what the workers run with.
        on_progress: called once with ("remote", 0, 0, None) when the edit is sent (the steps run
            on another machine and are not streamed back).
        should_cancel: polled twice a second; True asks the worker to stop at its next step.

    Raises:
        The edit's own errors (ValueError, blending.Cancelled, ...), re-raised here;
        RuntimeError: the worker died.
    """
    ray = _ray()
    connect(settings.ray_address)
    actor = _take_worker()
    job = next(_JOBS)
    try:
        ref = actor.run_request.remote(request, settings, job)
        if on_progress:
            on_progress("remote", 0, 0, None)
        cancelled = False
        while not ray.wait([ref], timeout=0.5)[0]:
            if should_cancel and should_cancel() and not cancelled:
                actor.cancel.remote(job)
                cancelled = True
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # The worker's own exception (a one-line ValueError, Cancelled, ...), as run_edit raises it.
            raise exc.cause from exc
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"the Ray worker failed: {one_line(exc)}") from exc
    finally:
        with _POOL_LOCK:
            if actor in _BUSY:  # not when the pool was stopped meanwhile
                _BUSY[actor] -= 1


def _take_worker():
    """The least busy worker of this process's pool."""
    workers = get_workers()
    with _POOL_LOCK:
        actor = min(workers, key=lambda a: _BUSY.get(a, 0))
        if actor in _BUSY:  # not when the pool was stopped meanwhile (it is not joined again)
            _BUSY[actor] += 1
        return actor


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("Ray is not installed: pip install 'ray>=2.9'") from exc
    return ray
