"""Many images on a dask.distributed cluster: the results :func:`~.batch.analyze_images` writes, several at once.

Research use only: not a diagnostic device.

:func:`start_client` starts a :class:`distributed.LocalCluster` of single-threaded worker processes (the way to use
more than one core for many small images) or connects to a running scheduler (dask-jobqueue, Kubernetes, Coiled ...:
any cluster whose workers see the same files). :func:`iter_on_cluster` sends the images in chunks and each whole
slide as a task of its own; each worker loads the models once (from their files: the caller needs only their paths)
and writes each result folder itself, exactly as one process would (:func:`~.batch.finish_image`,
:func:`~.batch.analyze_slide_file`); the caller keeps ``summary.csv``. A corrupt image costs only its row; a task whose
worker dies is retried by the scheduler, and reported in its images' rows if it keeps failing. A stop reaches the
slides being analysed through a :class:`distributed.Event`, which they poll between steps (tiles stay resumable).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Generator
from pathlib import Path

#: Seconds a stop waits for the slides being analysed on workers to finish their current step.
SLIDE_STOP_S = 10.0
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
    """The file of ``model`` (a path, or a loaded model's file), which workers load; None for no model (``--method
    stain``)."""
    if model is None:
        return None
    path = model if isinstance(model, (str, Path)) else getattr(model, "path", "")
    if not path or not Path(path).is_file():
        raise ValueError(f"the {kind} was not loaded from a file ({path or 'in memory'}): a cluster's workers load "
                         "models from their files; save it first")
    return str(Path(path).resolve())


def checked_model_file(path, kind: str) -> str | None:
    """The ``kind`` (``"classifier"`` or ``"segmenter"``) file the workers will load, checked here as they will check
    it (metadata and weights) without building its network: ``path`` is a file, a shipped classifier's name, or None
    for the shipped one.

    Raises
    ------
    CheckpointError
        As the loaders (:func:`~.model.load_classifier`, :func:`~.segment.load_segmenter`) would.
    """
    from .checkpoint import check_weights, read_safetensors, segmenter_metadata

    if kind == "classifier":
        from .model import CLASSIFIER_FORMAT, ClassifierInfo, classifier_file

        path = classifier_file(path)
        meta, state = read_safetensors(path, CLASSIFIER_FORMAT)
        ClassifierInfo.from_metadata(meta, path)
    else:
        from .segment import DEFAULT_SEGMENTER, SEGMENTER_FORMAT

        path = Path(path) if path else DEFAULT_SEGMENTER
        meta, state = read_safetensors(path, SEGMENTER_FORMAT)
        segmenter_metadata(meta, path)
    check_weights(state, path)
    return str(path.resolve())


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


def analyze_slide_task(path, folder, *, classifier_path, segmenter_path, config, resume: bool, overwrite: bool,
                       stop: str) -> list[tuple]:
    """Analyse one whole slide on a worker (:func:`~.batch.analyze_slide_file`): ``[(row, message)]``, the row None
    when the :class:`distributed.Event` named ``stop`` was set (the slide stays resumable).

    A task run again after its worker died resumes what its first run wrote (an event per slide records that it
    began), so a killed worker costs only the tile it was on.
    """
    from distributed import Event

    from .batch import analyze_slide_file

    began = Event(f"{stop}-began-{folder}")
    if began.is_set():  # run again: the results there are this run's own
        resume, overwrite = True, False
    began.set()
    classifier, segmenter = _worker_models(classifier_path, segmenter_path, config.device)
    stop_event = Event(stop)
    row, message, stopped = analyze_slide_file(path, folder, classifier=classifier, segmenter=segmenter,
                                               config=config, resume=resume, overwrite=overwrite,
                                               should_stop=stop_event.is_set)
    return [(None if stopped else row, message)]


def chunk_size(n_images: int, n_workers: int, config) -> int:
    """Images per task: single-cell images in batches (full batches for the classifier, yet two tasks per worker at
    least, so that no worker waits), smears one per task."""
    if not config.single_cell:
        return 1
    return max(1, min(config.batch_size, math.ceil(n_images / max(1, 2 * n_workers))))


def iter_on_cluster(client, todo, *, classifier, segmenter, config, overwrite: bool, resume: bool = False,
                    should_stop: Callable[[], bool] = lambda: False) -> Generator[tuple, None, bool]:
    """Analyse ``todo`` (a list of ``(index, path, folder)``) on ``client``'s workers.

    ``classifier`` and ``segmenter`` are loaded models or their files. Whole slides (:func:`~.slide.is_slide`) go one
    to a task, the other images in chunks (:func:`chunk_size`); ``resume`` and ``overwrite`` as for
    :func:`~.batch.analyze_images`. Yields ``(index, row, message)`` per image as its task finishes (in any order);
    returns True when stopped by ``should_stop`` (polled every half second): the tasks not started are cancelled, and the
    slides being analysed stop after their current step.
    """
    from distributed import Event, wait

    from .batch import summary_row
    from .slide import is_slide

    workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    slides = [t for t in todo if is_slide(t[1])]
    images = [t for t in todo if t not in slides]
    step = chunk_size(len(images), workers, config)
    paths = dict(classifier_path=model_file(classifier, "classifier"), segmenter_path=model_file(segmenter, "segmenter"))
    stop = Event(f"napari-leukemia-stop-{uuid.uuid4().hex}", client=client)
    futures = {}
    for slide in slides:
        future = client.submit(analyze_slide_task, str(slide[1]), str(slide[2]), config=config, resume=resume,
                               overwrite=overwrite, stop=stop.name, retries=1, pure=False, **paths)
        futures[future] = [slide]
    slide_tasks = set(futures)
    for chunk in (images[i : i + step] for i in range(0, len(images), step)):
        future = client.submit(analyze_chunk, [str(p) for _, p, _ in chunk], [str(f) for _, _, f in chunk],
                               config=config, overwrite=overwrite or resume, retries=1, pure=False, **paths)
        futures[future] = chunk
    remaining, stopped = set(futures), False
    try:
        while remaining:
            if should_stop():
                stop.set()  # the slides being analysed stop after their current step; wait for them a little
                wait(list(remaining & slide_tasks), timeout=SLIDE_STOP_S)
                return True
            try:
                finished, remaining = wait(remaining, timeout=0.5, return_when="FIRST_COMPLETED")
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
                    if row is None:  # a slide that saw the stop (set by another client): resumable
                        stopped = True
                    else:
                        yield index, row, message
        return stopped
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
