"""Many images on a dask.distributed cluster: the results :func:`~.batch.analyze_images` writes, several at once.

Research use only: not a diagnostic device.

:func:`start_client` starts a :class:`distributed.LocalCluster` of single-threaded worker processes (the way to use
more than one core for many small images) or connects to a running scheduler (dask-jobqueue, Kubernetes, Coiled ...:
any cluster whose workers see the same files). :func:`iter_on_cluster` sends the images in chunks; each worker loads
the models once (from their files) and writes each image's result folder itself, exactly as one process would
(:func:`~.batch.finish_image`); the caller keeps ``summary.csv``. A corrupt image costs only its row; a task whose
worker dies is retried by the scheduler, and reported in its images' rows if it keeps failing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator
from pathlib import Path

#: The models a worker process has loaded: ``{(classifier path, segmenter path, device): (classifier, segmenter)}``.
_WORKER_MODELS: dict = {}


def start_client(workers: int | None = None, scheduler: str | None = None):
    """A :class:`distributed.Client`: on ``scheduler`` (an address) or on a new local cluster of ``workers`` processes.

    Local workers have one thread each (dask's nanny sets ``OMP_NUM_THREADS=1`` in them), no dashboard, no memory
    limit of their own (the machine's is the limit) and glibc's own memory trimming. Close the client (and its cluster) when done:
    ``with start_client(2) as client: ...``.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    # dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, so that glibc hands freed memory back at once:
    # with the large arrays an analysis allocates and frees per image, that made each image 1.5x slower in a worker
    # than in one process (measured: 13.5 against 9.4 CPU s for 10 BCCD fields); glibc's default is kept instead
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=0, silence_logs=logging.ERROR)
    client = Client(cluster)
    client._closes_cluster = cluster  # closed with the client (see close_client)
    return client


def close_client(client) -> None:
    """Close ``client`` and the local cluster :func:`start_client` made for it, if any."""
    cluster = getattr(client, "_closes_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def model_file(model, kind: str) -> str | None:
    """The file a loaded model came from, which workers load again; None for no model (``--method stain``)."""
    if model is None:
        return None
    path = getattr(model, "path", "")
    if not path or not Path(path).is_file():
        raise ValueError(f"the {kind} was not loaded from a file ({path or 'in memory'}): a cluster's workers load "
                         "models from their files; save it first")
    return str(Path(path).resolve())


def _worker_models(classifier_path, segmenter_path, device):
    """The worker's models, loaded on its first task and kept for the next (one set at a time)."""
    key = (classifier_path, segmenter_path, device)
    if key not in _WORKER_MODELS:
        import cv2
        import torch

        from .model import load_classifier
        from .segment import load_segmenter

        cv2.setNumThreads(torch.get_num_threads())  # OpenCV's own pool would otherwise take every core of the machine
        _WORKER_MODELS.clear()
        _WORKER_MODELS[key] = (load_classifier(classifier_path, device),
                               None if segmenter_path is None else load_segmenter(segmenter_path, device))
    return _WORKER_MODELS[key]


def analyze_chunk(paths, folders, *, classifier_path, segmenter_path, config, overwrite: bool) -> list[tuple]:
    """Analyse ``paths`` into ``folders`` on a worker: ``(row, message)`` per image (see :func:`~.batch.finish_image`)."""
    from .batch import finish_image, iter_analyses

    classifier, segmenter = _worker_models(classifier_path, segmenter_path, config.device)
    analyses = iter_analyses(list(paths), classifier=classifier, segmenter=segmenter, config=config)
    return [finish_image(path, folder, image, result, seconds, config=config, overwrite=overwrite)
            for path, folder, (image, result, seconds) in zip(paths, folders, analyses)]


def chunk_size(n_images: int, n_workers: int, config) -> int:
    """Images per task: single-cell images in batches (full batches for the classifier, yet two tasks per worker at
    least, so that no worker waits), smears one per task."""
    if not config.single_cell:
        return 1
    return max(1, min(config.batch_size, math.ceil(n_images / max(1, 2 * n_workers))))


def iter_on_cluster(client, todo, *, classifier, segmenter, config, overwrite: bool,
                    should_stop: Callable[[], bool] = lambda: False) -> Generator[tuple, None, bool]:
    """Analyse ``todo`` (a list of ``(index, path, folder)``) on ``client``'s workers.

    Yields ``(index, row, message)`` per image as its task finishes (in any order); returns True when stopped by
    ``should_stop`` (polled every second), with the tasks not yet finished cancelled.
    """
    from distributed import wait

    from .batch import summary_row

    workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    step = chunk_size(len(todo), workers, config)
    chunks = [todo[i : i + step] for i in range(0, len(todo), step)]
    paths = dict(classifier_path=model_file(classifier, "classifier"), segmenter_path=model_file(segmenter, "segmenter"))
    futures = {}
    for chunk in chunks:
        future = client.submit(analyze_chunk, [str(p) for _, p, _ in chunk], [str(f) for _, _, f in chunk],
                               config=config, overwrite=overwrite, retries=1, pure=False, **paths)
        futures[future] = chunk
    remaining = set(futures)
    try:
        while remaining:
            if should_stop():
                return True
            try:
                finished, remaining = wait(remaining, timeout=1, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for future in sorted(finished, key=lambda f: futures[f][0][0]):
                chunk = futures[future]
                try:
                    results = future.result()
                except Exception as err:  # noqa: BLE001 -- a task that kept failing (its worker killed): its rows
                    results = [(summary_row(p, Path(f).name, None, 0.0, error=f"{p}: not analysed on the cluster "
                                            f"({type(err).__name__}: {err})"), "") for _, p, f in chunk]
                for (index, _, _), (row, message) in zip(chunk, results):
                    yield index, row, message
        return False
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
