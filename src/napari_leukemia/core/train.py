"""Classifier training as a generator: one report per epoch, a checkpoint every epoch, stop and resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .config import TrainConfig
from .model import Classifier, ClassifierInfo, load_classifier, new_classifier, save_classifier

#: The optimizer's and the schedule's state of an unfinished run, and its per-epoch reports (in its folder).
STATE_NAME, HISTORY_NAME = "last_state.pt", "history.json"
#: What to do when a run cannot be resumed.
_START_AGAIN = ("start again with --overwrite, or keep the weights by training into another folder with "
                "--init {out}/last.safetensors (best.safetensors and last.safetensors are left as they are)")


@dataclass
class CropSet:
    """Preprocessed cells for training: uint8 crops ``(N, S, S, 3)``, class indices ``(N,)``, groups ``(N,)``, and
    optionally each cell's finer class ``(N,)`` of str (:attr:`~.datasets.Sample.detail`, e.g. DeepAPL's cell class
    behind a binary label; ``""`` where unknown), which ``sampling="cell_class"`` draws by."""

    images: np.ndarray
    targets: np.ndarray
    groups: np.ndarray
    details: np.ndarray | None = None

    def __len__(self):
        return len(self.targets)

    def subset(self, mask) -> "CropSet":
        return CropSet(self.images[mask], self.targets[mask], self.groups[mask],
                       None if self.details is None else self.details[mask])


def class_weights(targets: np.ndarray, n_classes: int, chances: np.ndarray | None = None) -> np.ndarray:
    """Inverse-frequency class weights, mean 1 over present classes; refuses empty classes.

    ``chances``: each cell's probability of being drawn (:func:`draw_chances`), when not all are equal.
    """
    counts = np.bincount(targets, weights=chances, minlength=n_classes).astype(float)
    if (counts == 0).any():
        raise ValueError(f"every class needs training examples; counts per class: {counts.astype(int).tolist()}")
    w = counts.sum() / (n_classes * counts)
    return w / w.mean()


def check_details(details, sampling: str) -> None:
    """Refuse ``sampling="cell_class"`` when some cell has no finer class (``details`` None or with ``""``).

    Raises
    ------
    ValueError
        Naming the sampling, how many cells lack a finer class, and the other choices.
    """
    if sampling != "cell_class":
        return
    missing = None if details is None else sum(not d for d in details)
    if missing is None or missing:
        which = "no cell has one" if missing is None else f"{missing} of {len(details)} cells lack it"
        raise ValueError(f"sampling 'cell_class' draws by each cell's finer class (a CSV's detail column, DeepAPL's "
                         f"cell class), which this dataset does not give ({which}); add a detail column, or sample "
                         "by 'cells' or 'patients'")


def draw_chances(groups: np.ndarray, sampling: str, details: np.ndarray | None = None) -> np.ndarray | None:
    """Each training cell's chance of being drawn (:attr:`~.config.TrainConfig.sampling`).

    Parameters
    ----------
    groups : (N,) ndarray
        Each cell's group (patient, slide).
    sampling : {"cells", "patients", "cell_class"}
        ``cells``: None (each once per epoch); ``patients``: equal total chances per group; ``cell_class``: each
        cell ``1 / sqrt(n)``, n the cells of its finer class in ``details`` (a class's total goes as ``sqrt(n)``).
    details : (N,) ndarray of str, optional
        Each cell's finer class (:attr:`CropSet.details`); needed by ``cell_class``.

    Returns
    -------
    (N,) ndarray of float summing to 1, or None

    Raises
    ------
    ValueError
        ``cell_class`` without a finer class for every cell (:func:`check_details`).
    """
    if sampling == "cells":
        return None
    check_details(details, sampling)
    _, inverse, counts = np.unique(details if sampling == "cell_class" else groups, return_inverse=True,
                                   return_counts=True)
    chances = 1.0 / (np.sqrt(counts) if sampling == "cell_class" else counts)[inverse]
    return chances / chances.sum()


def epoch_order(n: int, chances: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """The cells of one epoch: a permutation, or ``n`` draws with replacement by ``chances``."""
    return rng.permutation(n) if chances is None else rng.choice(n, size=n, replace=True, p=chances)


def train_epochs(train: CropSet, val: CropSet, info: ClassifierInfo, cfg: TrainConfig, out_dir, *,
                 resume: bool = False, init: Classifier | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> Generator[dict, None, dict]:
    """Train a classifier; yields one report dict per epoch and returns the final one.

    Files in ``out_dir``: ``last.safetensors`` and ``last_state.pt`` (every epoch, and when stopped),
    ``best.safetensors`` (lowest validation loss), ``history.json``. A stop request (``should_stop()``
    true) ends the epoch in progress, saves ``last`` and returns; ``resume=True`` continues from it.
    ``cfg.cpu_minutes`` ends training once the process has spent that much CPU time on it (resumed epochs
    counted): the epoch in progress ends at the next step, is validated and saved, and training ends as at
    convergence.
    """
    import torch

    from .device import flush_denormals, resolve_device
    from .io import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.fast:
        flush_denormals(device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_classes = len(info.classes)
    for name, part in (("training", train), ("validation", val)):
        if len(part) == 0:
            raise ValueError(f"the {name} set is empty")
    chances = draw_chances(train.groups, cfg.sampling, train.details)
    w = class_weights(train.targets, n_classes, chances) if cfg.balance == "weights" else np.ones(n_classes)
    weights = torch.tensor(w, dtype=torch.float32, device=device)
    history, start_epoch, best_loss, bad_epochs = [], 0, float("inf"), 0
    if resume:
        st, history = read_resume_state(out, device)
        clf = load_classifier(out / "last.safetensors", str(device))
        clf.info = info if clf.info.classes == info.classes else clf.info
    elif init is not None:
        clf = Classifier(net=init.net, info=info, feature_svm=init.feature_svm)  # a fine-tune keeps its SVM
    else:
        clf = new_classifier(info, imagenet_weights=cfg.imagenet or None)
    net = clf.net.to(device)
    if cfg.fast:
        net.to(memory_format=torch.channels_last)
    frozen = frozen_modules(net, cfg.tune)
    for module in frozen:
        module.requires_grad_(False)
    opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    if resume:
        try:
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"{out / STATE_NAME}: its optimizer state does not fit this run ({err}); resume with "
                                  f"the settings it was started with (--tune), or {_START_AGAIN.format(out=out)}") from err
        start_epoch, best_loss, bad_epochs = st["epoch"], float(st["best_loss"]), st["bad_epochs"]
        rng = np.random.default_rng(cfg.seed + start_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.fast)
    cpu_spent = sum(h.get("cpu_seconds", 0.0) for h in history)
    budget = cfg.cpu_minutes * 60 if cfg.cpu_minutes else float("inf")
    report: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        t0, cpu0 = time.perf_counter(), time.process_time()
        net.train()
        for module in frozen:
            module.eval()  # keeps their batch-norm statistics
        order = epoch_order(len(train), chances, rng)
        steps = len(order) // cfg.batch_size or 1
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        batches = [order[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(steps)]
        fit = train_one_epoch(net, train, batches, info, cfg, opt, scaler, weights, epoch=epoch, out=out,
                              should_stop=should_stop,
                              out_of_budget=lambda end=cpu0 + budget - cpu_spent: time.process_time() >= end)
        if fit["stopped"]:
            _save_state(clf, out, opt, sched, epoch, best_loss, bad_epochs)
            report = {"epoch": epoch, "stopped": True, "checkpoint": str(out / "last.safetensors")}
            yield report
            return report
        val_loss, val_acc = _validate(clf, val, weights, cfg, device)
        sched.step(val_loss)
        improved = val_loss < best_loss
        if improved:
            best_loss, bad_epochs = val_loss, 0
            save_classifier(clf, out / "best.safetensors")
        else:
            bad_epochs += 1
        cpu_epoch = time.process_time() - cpu0
        cpu_spent += cpu_epoch
        report = {
            "epoch": epoch + 1,
            "train_loss": fit["train_loss"],
            "train_accuracy": fit["train_accuracy"],
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": cpu_epoch,
            "steps": fit["steps"],
            "improved": improved,
            "stopped": False,
        }
        history.append(report)
        write_json(out / HISTORY_NAME, history)  # atomically: a run killed here keeps the previous history
        _save_state(clf, out, opt, sched, epoch + 1, best_loss, bad_epochs)
        yield report
        if bad_epochs >= cfg.patience or cpu_spent >= budget:
            break
    return {**report, "best_val_loss": best_loss, "checkpoint": str(out / "best.safetensors")}


def train_one_epoch(net, train: CropSet, batches: list[np.ndarray], info: ClassifierInfo, cfg: TrainConfig, opt,
                    scaler, weights, *, epoch: int, out: Path, should_stop: Callable[[], bool],
                    out_of_budget: Callable[[], bool] = lambda: False) -> dict:
    """One pass over ``batches`` (index arrays into ``train``): augment, normalise, one optimiser step each.

    Returns ``train_loss`` and ``train_accuracy`` (over the cells seen), ``steps`` (taken) and ``stopped``
    (``should_stop()`` came true between steps). ``out_of_budget()`` true after a step ends the pass there.

    Raises
    ------
    FloatingPointError
        The loss is not finite (the message names the epoch and step and advises a lower learning rate).
    MemoryError
        The batch does not fit the device's memory (advising a smaller batch).
    """
    import torch
    import torch.nn.functional as F

    from .augment import augment_batch
    from .device import autocast_for
    from .preprocess import normalize

    device = next(net.parameters()).device
    images = torch.from_numpy(train.images)  # uint8, moved per batch
    loss_sum, correct, seen = 0.0, 0, 0
    steps = 0
    for step, idx in enumerate(batches):
        if should_stop():
            return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "steps": steps,
                    "stopped": True}
        if steps and out_of_budget():
            break
        x = images[idx].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        y = torch.from_numpy(train.targets[idx]).to(device)
        if cfg.augment:
            x = augment_batch(x, stain_jitter=cfg.stain_jitter, stain_vector_jitter=cfg.stain_vector_jitter,
                              blur_p=cfg.blur_p, lowres_p=cfg.lowres_p)
        x = normalize(x, info.crop)
        if cfg.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with autocast_for(device, cfg.fast):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, weight=weights)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                         f"lower the learning rate (finished epochs' checkpoints in {out} are kept)")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        except RuntimeError as err:  # torch.OutOfMemoryError on CUDA; a CPU allocator failure is a plain one
            if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
                raise
            raise MemoryError(f"out of memory with batch size {cfg.batch_size} on {device.type}; try a smaller "
                              "batch size") from err
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        steps += 1
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "steps": steps,
            "stopped": False}


def frozen_modules(net, tune: str) -> list:
    """The parts of a classifier that ``tune`` (:attr:`~.config.TrainConfig.tune`) keeps fixed."""
    if tune == "all":
        return []
    if tune == "head":
        return [net.features]
    return [m for name, m in net.features.named_children() if name not in net.last_block]


def _validate(clf: Classifier, val: CropSet, weights, cfg: TrainConfig, device):
    import torch
    import torch.nn.functional as F

    from .predict import predict_logits

    logits = torch.from_numpy(predict_logits(clf, val.images, batch_size=max(cfg.batch_size, 64), fast=cfg.fast))
    y = torch.from_numpy(val.targets)
    loss = float(F.cross_entropy(logits, y, weight=weights.cpu()))
    return loss, float((logits.argmax(1) == y).float().mean())


def _save_state(clf, out: Path, opt, sched, epoch, best_loss, bad_epochs) -> None:
    import torch

    from .io import atomic_path

    save_classifier(clf, out / "last.safetensors", half=False)
    with atomic_path(out / STATE_NAME) as tmp:
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                    "best_loss": best_loss, "bad_epochs": bad_epochs}, tmp)


def read_resume_state(out_dir, map_location="cpu") -> tuple[dict, list[dict]]:
    """The saved state (:data:`STATE_NAME`) and history (:data:`HISTORY_NAME`) of the unfinished run in ``out_dir``.

    The state is read with ``torch.load(weights_only=True)`` (tensors and plain data only, never arbitrary
    objects). The history is cut to the state's finished epochs (a run killed between writing the two
    resumes at the state's epoch).

    Raises
    ------
    FileNotFoundError
        No state, or no history while the state counts finished epochs.
    CheckpointError
        A state file that is damaged, truncated or not ours.
    ValueError
        A history that is damaged, not a list of epoch reports, or shorter than the state's epochs.
    """
    import pickle

    import torch

    out = Path(out_dir)
    path = out / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to resume (no earlier run in {out})")
    fix = _START_AGAIN.format(out=out)
    try:
        st = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, OverflowError) as err:
        # from None: torch's message would suggest loading with weights_only=False, which can run any code
        raise CheckpointError(f"{path}: damaged, truncated or not a training state of napari-leukemia "
                              f"(unreadable: {type(err).__name__}); it cannot be resumed: {fix}") from None
    counts = ("epoch", "bad_epochs")
    if not (isinstance(st, dict) and isinstance(st.get("optimizer"), dict) and isinstance(st.get("scheduler"), dict)
            and all(type(st.get(k)) is int and st[k] >= 0 for k in counts)
            and isinstance(st.get("best_loss"), (int, float))):
        raise CheckpointError(f"{path}: not a training state of napari-leukemia (it lacks the optimizer, schedule "
                              f"or epoch counts); it cannot be resumed: {fix}")
    history_path = out / HISTORY_NAME
    if not history_path.is_file() and st["epoch"] == 0:  # stopped within the first epoch
        return st, []
    if not history_path.is_file():
        raise FileNotFoundError(f"{history_path}: missing, while {path} counts {st['epoch']} finished epoch(s); "
                                f"it cannot be resumed: {fix}")
    try:
        history = json.loads(history_path.read_text(encoding="utf-8"))
    except ValueError as err:  # not JSON or not UTF-8
        raise ValueError(f"{history_path}: damaged, not a training history ({err}); it cannot be resumed: {fix}") from err
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy", "seconds")

    def is_report(h) -> bool:
        return isinstance(h, dict) and all(isinstance(h.get(k), (int, float)) for k in keys)

    if not (isinstance(history, list) and all(map(is_report, history))):
        raise ValueError(f"{history_path}: not a training history (a list of epoch reports with {', '.join(keys)}); "
                         f"it cannot be resumed: {fix}")
    if [h["epoch"] for h in history[: st["epoch"]]] != list(range(1, st["epoch"] + 1)):
        raise ValueError(f"{history_path}: holds epochs {[h['epoch'] for h in history][:20]}, not epochs 1 to "
                         f"{st['epoch']} as {path} counts; it cannot be resumed: {fix}")
    return st, history[: st["epoch"]]
