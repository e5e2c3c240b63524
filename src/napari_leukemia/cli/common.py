"""What the sub-commands share: exit codes, usage errors, argument types, Ctrl-C handling, driving core generators."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.datasets import IMAGE_SUFFIXES, image_files

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments or a run that cannot start; reported with exit code 2."""


def positive_int(text: str) -> int:
    return _whole_number(text, least=1)


def fold_name(text: str) -> int | str:
    """A fold's number (from 0) or ``final``, for ``train --cv K --fold``."""
    if text == "final":
        return text
    try:
        return _whole_number(text, least=0)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}: give a fold's number (from 0) or 'final'") from None


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {text!r}")
    return value


def _float(text: str, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 <= value if zero_ok else 0 < value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be {'zero or ' if zero_ok else ''}a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    return _float(text, zero_ok=True)


def positive_float(text: str) -> float:
    return _float(text, zero_ok=False)


def check_device(device: str) -> None:
    from ..core.device import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(str(err)) from err


def segment_config(args):
    from ..core.config import SegmentConfig

    return SegmentConfig(method=args.method, diameter=args.diameter)


class StopOnInterrupt:
    """While active, the first Ctrl-C asks the run to stop at its next step (checkpoints are kept); a second aborts.

    Call the object to read the request (it is the ``should_stop`` of the core generators).
    """

    def __init__(self, what: str = "at the next step (checkpoints are kept)"):
        self.requested = False
        self.what = what
        self._previous = None

    def __call__(self) -> bool:
        return self.requested

    def _on_interrupt(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nstopping {self.what}; Ctrl-C again to abort", file=sys.stderr)

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def drive(run, args, on_event=None):
    """Run a core generator to its result, with a progress bar of its ``"crop"`` events; the other events go to
    ``on_event``; refusals become usage errors (exit 2)."""
    from tqdm import tqdm

    from ..core.checkpoint import CheckpointError

    bar = None
    try:
        while True:
            try:
                event = next(run)
            except StopIteration as done:
                return done.value
            if event.stage == "crop":
                if bar is None:
                    bar = tqdm(total=event.total, desc="cropping cells", unit="file", file=sys.stderr,
                               disable=args.quiet)
                bar.update(event.done - bar.n)
                continue
            if bar is not None:
                bar.close()
                bar = None
            if on_event:
                on_event(event)
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError) as err:
        raise UsageError(str(err)) from err
    finally:
        if bar is not None:
            bar.close()


def expand_images(items) -> list[Path]:
    """Files as given; folders replaced by their image files (sorted, not recursive).

    A folder without images stays in the list as itself, to fail on its own with the others still analysed;
    when nothing else is given, it is a usage error.
    """
    paths, empty = [], []
    for item in items:
        p = Path(item)
        found = image_files(p) if p.is_dir() else [p]
        if not found:
            empty.append(p)
            found = [p]
        paths.extend(found)  # a missing or unreadable file fails on its own, later
    if empty and len(empty) == len(paths):
        raise UsageError(f"folder {empty[0]} holds no images ({' '.join(IMAGE_SUFFIXES)})")
    return paths
