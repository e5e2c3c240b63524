"""Command line: ``napari-leukemia analyze`` runs the whole analysis on smear images, without napari;
``train`` and ``evaluate`` make and score classifiers from a dataset.

Research use only: not a diagnostic device.

Per image, ``DIR/<stem>/`` receives ``labels.tif``, ``cells.csv``, ``summary.json`` and ``overlay.png``;
``DIR/summary.csv`` holds one row per image. Exit codes: 0 all images analysed, 1 some image failed,
2 usage error or nothing could start (existing summary, bad model, bad device), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .core.config import DISCLAIMER
from .core.datasets import DEEPAPL_LABELS
from .samples import SAMPLES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
#: The files written per image, in ``DIR/<stem>/``.
OUTPUT_FILES = ("labels.tif", "cells.csv", "summary.json", "overlay.png")
SUMMARY_CSV = "summary.csv"
#: What ``train`` writes in its output folder.
TRAIN_FILES = ("best.safetensors", "last.safetensors", "last_state.pt", "history.json", "run.json", "curves.png",
               "classifier.safetensors")
DATASET_HELP = ("a folder of class sub-folders, a CSV with columns path,label[,group][,split] (paths relative to it), "
                "or DeepAPL's manifest.csv")
SUMMARY_COLUMNS = ("image", "stem", "status", "leukocytes", "leukemic", "leukemic_fraction", "blast_pct",
                   "blast_pct_low", "blast_pct_high", "too_few_cells", "segmenter", "classifier", "seconds", "error")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments or a run that cannot start; reported with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-leukemia`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="napari-leukemia",
        description="Find and classify leukaemic cells in Wright-Giemsa blood smears. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    a = sub.add_parser(
        "analyze",
        help="segment and classify every leukocyte of smear images",
        description=(
            "Segment and classify every leukocyte of each IMAGE. Writes DIR/<stem>/{"
            + ",".join(OUTPUT_FILES) + "} per image and DIR/summary.csv. " + DISCLAIMER
        ),
    )
    a.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"image files, or folders of them ({' '.join(IMAGE_SUFFIXES)}; not recursive)")
    a.add_argument("--sample", action="append", choices=sorted(SAMPLES), default=[],
                   help="add a bundled sample smear (may be repeated)")
    a.add_argument("--out", required=True, metavar="DIR", type=Path, help="output folder")
    a.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the networks run (default: auto, CUDA when available)")
    a.add_argument("--no-gradcam", dest="gradcam", action="store_false",
                   help="skip the Grad-CAM explanation (faster)")
    a.add_argument("--segmenter", metavar="PATH", help="cellpose segmenter checkpoint (default: the shipped one)")
    a.add_argument("--classifier", metavar="PATH|NAME", help="classifier checkpoint, or a shipped one by name "
                   "(leukemic: leukaemic vs normal, the default; cell_type: DeepAPL cell types)")
    a.add_argument("--method", choices=("cellpose", "stain"), default="cellpose",
                   help="segmentation: the trained cellpose model (default) or the stain-based baseline")
    a.add_argument("--diameter", type=_positive_float, metavar="PX",
                   help="expected leukocyte diameter in pixels (default: estimated from the stain)")
    a.add_argument("--red-cell-diameter", type=_positive_float, metavar="PX",
                   help="red-cell diameter in pixels, the scale of a cell-type classifier's crops (default: "
                        "measured on each image)")
    a.add_argument("--overwrite", action="store_true", help="replace existing results in DIR")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_analyze, subparser=a)
    e = sub.add_parser(
        "evaluate-segmentation",
        help="score a segmenter against leukocyte boxes (Pascal VOC)",
        description="Segment each IMAGE and match its cells to the boxes in VOC_DIR/<stem>.xml (IoU >= --iou). "
                    "Writes DIR/segmentation_metrics.json: precision, recall, F1, mean box IoU, per image.",
    )
    e.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    e.add_argument("--boxes", required=True, type=Path, metavar="VOC_DIR", help="folder of Pascal VOC XML files")
    e.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    e.add_argument("--method", choices=("cellpose", "stain"), default="cellpose")
    e.add_argument("--segmenter", metavar="PATH", help="cellpose segmenter checkpoint (default: the shipped one)")
    e.add_argument("--diameter", type=_positive_float, metavar="PX", help="expected leukocyte diameter in pixels")
    e.add_argument("--iou", type=float, default=0.5, help="IoU for a match (default 0.5)")
    e.add_argument("--label", default="WBC", help="object name of the boxes (default WBC)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--overwrite", action="store_true", help="replace an existing metrics file")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate_segmentation, subparser=e)
    _add_classifier_commands(sub)
    return parser


def _add_classifier_commands(sub) -> None:
    """The ``train`` and ``evaluate`` sub-commands (thin over :mod:`.core.fit` and :mod:`.core.scoring`)."""
    from .core.config import TUNE_CHOICES, CropConfig, TrainConfig

    d = TrainConfig()
    t = sub.add_parser(
        "train",
        help="train a DenseNet201 classifier on a dataset",
        description="Train a DenseNet201 cell classifier on DATASET, split by group (patient): train / val "
                    "(best epoch, calibration) / test (kept aside; score it with `evaluate`). Writes DIR/{"
                    + ",".join(TRAIN_FILES) + "}; Ctrl-C stops cleanly, keeping the checkpoints (--resume continues). "
                    "Exit codes: 0 trained, 1 trained but some files were skipped (named), 2 bad input, 130 stopped. "
                    + DISCLAIMER,
    )
    t.add_argument("dataset", type=Path, metavar="DATASET", help=DATASET_HELP)
    t.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    t.add_argument("--epochs", type=_positive_int, default=d.epochs, help=f"at most this many (default {d.epochs})")
    t.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    t.add_argument("--lr", type=_positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    t.add_argument("--patience", type=_positive_int, default=d.patience,
                   help=f"stop after this many epochs without a better validation loss (default {d.patience})")
    t.add_argument("--size", type=_positive_int, metavar="PX",
                   help=f"crop side in pixels (default: the --init or resumed checkpoint's, else {CropConfig().size})")
    t.add_argument("--window", type=float, metavar="RED_CELLS",
                   help="crop a fixed window of this many red-cell diameters around each cell, keeping its size "
                        "(for cell types; 0: fit the crop to each cell; default: the --init or resumed checkpoint's, "
                        "else 0)")
    t.add_argument("--leukemic-classes", nargs="+", metavar="CLASS",
                   help="the classes that are leukaemic (default: 'leukemic' for leukemic/normal data; else names "
                        "containing leukem/leukaem/blast/promyelocyte/promonocyte, or the --init checkpoint's)")
    t.add_argument("--init", metavar="CKPT", help="fine-tune this classifier checkpoint (same class list)")
    t.add_argument("--new-head", action="store_true",
                   help="keep only the DenseNet201 features of --init and train a new head for the dataset's "
                        "classes (another class list, e.g. --labels cell_type)")
    t.add_argument("--tune", choices=TUNE_CHOICES, default=d.tune,
                   help="which weights train: all (default), DenseNet201's last dense block and the head, or the "
                        "head alone (several times faster on a CPU)")
    t.add_argument("--imagenet", default=d.imagenet, metavar="auto|PATH|none",
                   help="ImageNet DenseNet201 weights: auto (torchvision's cache, if there), a .pth file, or none; "
                        "nothing is downloaded")
    t.add_argument("--cv", type=_positive_int, nargs="?", const=5, metavar="K",
                   help="cross-validate by patient instead: K folds of groups (default 5, at least 3), balanced by "
                        "diagnosis, over every group whatever its split; one run per fold in DIR/fold_<i>, each "
                        "scored on its own patients; writes DIR/{cv.json,predictions.csv,patients.csv,patients.png}. "
                        "Rerun the same command to resume fold by fold")
    t.add_argument("--resume", action="store_true", help="continue the unfinished run in DIR")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or earlier run in DIR")
    t.add_argument("--seed", type=int, default=d.seed, help=f"split and training seed (default {d.seed})")
    t.add_argument("--steps-per-epoch", type=int, default=0, metavar="N",
                   help="cap the training steps per epoch (default 0: the whole training set)")
    t.add_argument("--stain-jitter", type=_non_negative_float, default=d.stain_jitter, metavar="SIGMA",
                   help="stain-aware augmentation: per-image scale N(1, SIGMA) and shift N(0, SIGMA) of each "
                        f"haematoxylin/eosin/DAB optical density; 0 turns it off (default {d.stain_jitter:g})")
    t.add_argument("--stain-vector-jitter", type=_non_negative_float, default=d.stain_vector_jitter, metavar="SIGMA",
                   help="stain-aware augmentation: per-image N(0, SIGMA) noise on the stain colour vectors, as another "
                        f"dye batch or scanner would colour the cell; 0 turns it off (default {d.stain_vector_jitter:g})")
    t.add_argument("--lowres-p", type=_non_negative_float, default=d.lowres_p, metavar="P",
                   help="augmentation: probability that a crop is shrunk 1.5-3 times and enlarged back, as a smear "
                        f"imaged at lower resolution looks (default {d.lowres_p:g})")
    _dataset_options(t)
    t.set_defaults(func=cmd_train, subparser=t)

    v = sub.add_parser(
        "evaluate",
        help="score a classifier on a dataset split",
        description="Score a classifier on one split of DATASET (the same split by group as `train` with the "
                    "checkpoint's seed: `test` is what training kept aside). Writes DIR/{metrics.json,roc.png,"
                    "confusion.png}: accuracy, balanced accuracy, precision, recall, F1, specificity, ROC-AUC, "
                    "sensitivity at 95%% specificity, ECE, confusion matrix, per-class and per-group results. "
                    "Exit codes: 0 ok, 1 some files were skipped (named), 2 bad input. " + DISCLAIMER,
    )
    v.add_argument("dataset", type=Path, metavar="DATASET", help=DATASET_HELP)
    v.add_argument("--classifier", metavar="PATH|NAME", help="classifier checkpoint, or a shipped one by name "
                   "(leukemic: leukaemic vs normal, the default; cell_type: DeepAPL cell types)")
    v.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    v.add_argument("--split", choices=("test", "val", "train", "all"), default="test", help="default test")
    v.add_argument("--seed", type=int, help="split seed (default: the one the checkpoint was trained with, else 0)")
    v.add_argument("--leukemic-classes", nargs="+", metavar="LABEL",
                   help="dataset labels that are leukaemic, when they are not the checkpoint's classes")
    v.add_argument("--batch-size", type=_positive_int, default=64, help="default 64")
    v.add_argument("--overwrite", action="store_true", help="replace existing results in DIR")
    _dataset_options(v)
    v.set_defaults(func=cmd_evaluate, subparser=v)


def _dataset_options(p) -> None:
    p.add_argument("--single-cells", action="store_true",
                   help="the images are single-cell crops already (no segmentation)")
    p.add_argument("--labels", choices=DEEPAPL_LABELS, default="binary",
                   help="DeepAPL manifest: leukemic/normal (default), the pathologist's cell classes, or those "
                        "classes grouped into cell types (small classes joined)")
    p.add_argument("--method", choices=("cellpose", "stain"), default="cellpose",
                   help="how whole fields are segmented before their centre cell is cropped")
    p.add_argument("--segmenter", metavar="PATH", help="cellpose segmenter checkpoint (default: the shipped one)")
    p.add_argument("--diameter", type=_positive_float, metavar="PX", help="expected leukocyte diameter in pixels")
    p.add_argument("--crops-cache", type=Path, metavar="NPZ",
                   help="read crops made before from this file and add new ones to it (segmenting is slow)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _float(text: str, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 <= value if zero_ok else 0 < value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be {'zero or ' if zero_ok else ''}a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    return _float(text, zero_ok=True)


def _positive_float(text: str) -> float:
    return _float(text, zero_ok=False)


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else EXIT_USAGE)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except UsageError as err:
        args.subparser.print_usage(sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------------- analyze


def cmd_analyze(args) -> int:
    """``napari-leukemia analyze``: see :func:`build_parser`."""
    from .samples import sample_path

    images = expand_images(args.images) + [sample_path(name) for name in args.sample]
    if not images:
        raise UsageError("no images given: pass IMAGE files or folders, or --sample NAME")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    summary_csv = out / SUMMARY_CSV
    if summary_csv.exists() and not args.overwrite:
        raise UsageError(f"{summary_csv} exists; pass --overwrite to replace it, or choose another --out")

    # heavy imports only now, so that --help stays fast
    from .core.config import AnalysisConfig, SegmentConfig

    try:
        config = AnalysisConfig(device=args.device, gradcam=args.gradcam, red_cell_diameter=args.red_cell_diameter,
                                segment=SegmentConfig(method=args.method, diameter=args.diameter))
    except ValueError as err:
        raise UsageError(str(err)) from err
    classifier, segmenter = _load_models(args)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the output folder {out} ({err})") from err

    from tqdm import tqdm

    rows = []
    folders = _output_folders(images)
    bar = tqdm(list(zip(images, folders)), desc="analyze", unit="image", file=sys.stderr, disable=args.quiet)
    try:
        for path, folder in bar:
            bar.set_postfix_str(Path(path).name, refresh=False)
            row = analyze_one(path, out / folder, classifier=classifier, segmenter=segmenter, config=config,
                              overwrite=args.overwrite)
            if row["error"]:
                tqdm.write(f"error: {row['error']}", file=sys.stderr)
            elif row.get("message"):
                tqdm.write(f"note: {row['message']}", file=sys.stderr)
            rows.append(row)
    except KeyboardInterrupt:
        bar.close()
        _write_summary_csv(summary_csv, rows)
        print(f"interrupted: {len(rows)} of {len(images)} images done; {summary_csv} lists them", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    _write_summary_csv(summary_csv, rows)
    print_report(rows, out)
    return EXIT_FAILED if any(r["status"] != "ok" for r in rows) else EXIT_OK


def cmd_evaluate_segmentation(args) -> int:
    """``napari-leukemia evaluate-segmentation``: see :func:`build_parser`."""
    import functools

    images = expand_images(args.images)
    target = Path(args.out) / "segmentation_metrics.json"
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
    if not Path(args.boxes).is_dir():
        raise UsageError(f"--boxes {args.boxes} is not a folder")
    from tqdm import tqdm

    from .core.boxes import score_segmentation
    from .core.checkpoint import CheckpointError
    from .core.config import SegmentConfig
    from .core.io import write_json
    from .core.segment import load_segmenter, segment_leukocytes

    cfg = SegmentConfig(method=args.method, diameter=args.diameter)
    model = None
    if args.method == "cellpose":
        try:
            model = load_segmenter(args.segmenter, args.device)
        except (CheckpointError, RuntimeError, ValueError) as err:
            raise UsageError(f"cannot load the segmenter: {err}") from err
    bar = tqdm(total=len(images), desc="evaluate", unit="image", file=sys.stderr, disable=args.quiet)
    report = score_segmentation(images, args.boxes, functools.partial(segment_leukocytes, cfg=cfg, model=model),
                                iou_threshold=args.iou, name=args.label, progress=lambda _: bar.update())
    bar.close()
    report["segmenter"] = "stain-based" if model is None else Path(model.path).name
    write_json(target, report)
    for err in report["errors"]:
        print(f"error: {err}", file=sys.stderr)
    print(f"{report['images']} images, {report['tp'] + report['fn']} boxes: precision {report['precision']:.3f}, "
          f"recall {report['recall']:.3f}, F1 {report['f1']:.3f}, mean IoU {report['mean_iou']:.3f}; {target}")
    return EXIT_FAILED if report["errors"] else EXIT_OK


# ---------------------------------------------------------------------------------------------- train, evaluate


def cmd_train(args) -> int:
    """``napari-leukemia train``: see :func:`build_parser`."""
    import shlex

    from .core.config import TrainConfig

    imagenet = "" if args.imagenet == "none" else args.imagenet
    if imagenet not in ("", "auto") and not Path(imagenet).is_file():
        raise UsageError(f"--imagenet {imagenet}: no such file (give auto, none or a .pth file)")
    try:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                             seed=args.seed, device=args.device, imagenet=imagenet,
                             max_steps_per_epoch=max(args.steps_per_epoch, 0), stain_jitter=args.stain_jitter,
                             stain_vector_jitter=args.stain_vector_jitter, lowres_p=args.lowres_p,
                             tune=args.tune)
    except ValueError as err:
        raise UsageError(str(err)) from err
    _check_device(args.device)
    if args.cv is not None:
        return _cross_validate(args, config)
    from .core.fit import fit_classifier

    with StopOnInterrupt() as stop:
        run = fit_classifier(args.dataset, args.out, config=config, size=args.size, window=args.window,
                             single_cells=args.single_cells,
                             deepapl_labels=args.labels, leukemic=args.leukemic_classes, init=args.init,
                             new_head=args.new_head, resume=args.resume, overwrite=args.overwrite, segment=_segment_config(args),
                             segmenter=args.segmenter, crops_cache=args.crops_cache,
                             command=shlex.join(["napari-leukemia", *args.argv]), should_stop=stop)
        try:
            result = _drive(run, args, on_event=_print_training_event)
        except (FloatingPointError, MemoryError) as err:  # diverged, or a batch too large: the run's files stay
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
    for message in result["skipped"]:
        print(f"skipped: {message}", file=sys.stderr)
    if result["stopped"]:
        where = f"; {result['checkpoint']} kept, continue with --resume" if result["history"] else ""
        print(f"stopped{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    m = result["val_metrics"]
    print(f"validation: ROC-AUC {m['roc_auc']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
          f"ECE {m['ece']:.3f} (temperature {result['temperature']:.2f})")
    print(f"classifier: {result['checkpoint']}  (score it on the test split: napari-leukemia evaluate "
          f"{shlex.quote(str(args.dataset))} --classifier {shlex.quote(result['checkpoint'])} --out DIR)")
    print(DISCLAIMER)
    return EXIT_FAILED if result["skipped"] else EXIT_OK


def _cross_validate(args, config) -> int:
    """``napari-leukemia train --cv K``: see :func:`~.core.crossval.cross_validate`."""
    import shlex

    from .core.crossval import cross_validate

    def on_event(event):
        if event["stage"] == "fold":
            print(f"fold {event['fold'] + 1}/{event['folds']}: {event['status']}", flush=True)
        elif event["stage"] == "report":
            print("writing the cross-validation report", flush=True)
        else:
            _print_training_event(event)

    with StopOnInterrupt() as stop:
        run = cross_validate(args.dataset, args.out, k=args.cv, config=config, size=args.size, window=args.window,
                             single_cells=args.single_cells, deepapl_labels=args.labels,
                             leukemic=args.leukemic_classes, init=args.init, new_head=args.new_head,
                             overwrite=args.overwrite, segment=_segment_config(args), segmenter=args.segmenter,
                             crops_cache=args.crops_cache, command=shlex.join(["napari-leukemia", *args.argv]),
                             should_stop=stop)
        try:
            result = _drive(run, args, on_event=on_event)
        except (FloatingPointError, MemoryError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
    if result["stopped"]:
        print(f"stopped after {result['folds_done']} complete fold(s); run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    r = result["report"]
    o, e = r["pooled"], r["patient_errors"]
    print(f"{r['n_cells']} cells of {r['n_patients']} patients, each scored by the fold model that never saw it: "
          f"ROC-AUC {o['roc_auc']:.3f}, sensitivity at 95% specificity {o['sensitivity_at_95_specificity']:.3f}, "
          f"balanced accuracy {o['balanced_accuracy']:.3f}, ECE {o['ece']:.3f}")
    print(f"per patient, blast-equivalent %: mean error {e['mean_abs_error']:.1f} points, largest "
          f"{e['max_abs_error']:.1f}, {e['over_10_points']} patient(s) off by more than 10")
    print(f"report: {Path(args.out) / 'cv.json'}, {Path(args.out) / 'patients.csv'}, {Path(args.out) / 'patients.png'}")
    print(DISCLAIMER)
    return EXIT_OK


def cmd_evaluate(args) -> int:
    """``napari-leukemia evaluate``: see :func:`build_parser`."""
    target = Path(args.out) / "metrics.json"
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
    _check_device(args.device)
    from .core.checkpoint import CheckpointError
    from .core.model import load_classifier
    from .core.scoring import evaluate_dataset

    try:
        classifier = load_classifier(args.classifier, args.device)
    except CheckpointError as err:
        raise UsageError(f"cannot load the classifier: {err}") from err
    with StopOnInterrupt() as stop:
        run = evaluate_dataset(args.dataset, classifier, args.out, split=args.split, single_cells=args.single_cells,
                               deepapl_labels=args.labels, truth_leukemic=args.leukemic_classes, seed=args.seed,
                               segment=_segment_config(args), segmenter=args.segmenter, crops_cache=args.crops_cache,
                               device=args.device, batch_size=args.batch_size, should_stop=stop)
        report = _drive(run, args)
    if report is None:
        print("stopped: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    for message in report["skipped"]:
        print(f"skipped: {message}", file=sys.stderr)
    if report["split_matches_training"] is False:
        print(f"warning: this {args.split} split differs from the one the classifier was trained with (other data, "
              "seed or settings): its cells may have been seen in training", file=sys.stderr)
    o = report["overall"]
    print(f"{report['n_cells']} cells ({args.split}): accuracy {o['accuracy']:.3f}, balanced accuracy "
          f"{o['balanced_accuracy']:.3f}, ROC-AUC {o['roc_auc']:.3f}, sensitivity at 95% specificity "
          f"{o['sensitivity_at_95_specificity']:.3f}, ECE {o['ece']:.3f}; results in {args.out}")
    if "hard_pair" in report:
        h = report["hard_pair"]
        print(f"leukaemic cells against {', '.join(h['normal_labels'])}: ROC-AUC {h['roc_auc']:.3f}")
    if report["per_class"] is not None:
        print(f"cell classes: accuracy {report['per_class']['accuracy']:.3f}, macro-F1 "
              f"{report['per_class']['macro_f1']:.3f}")
    print(DISCLAIMER)
    return EXIT_FAILED if report["skipped"] else EXIT_OK


def _check_device(device: str) -> None:
    from .core.device import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(str(err)) from err


def _segment_config(args):
    from .core.config import SegmentConfig

    return SegmentConfig(method=args.method, diameter=args.diameter)


class StopOnInterrupt:
    """While active, the first Ctrl-C asks the run to stop at its next step (checkpoints are kept); a second aborts.

    Call the object to read the request (it is the ``should_stop`` of the core generators).
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __call__(self) -> bool:
        return self.requested

    def _on_interrupt(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping at the next step (checkpoints are kept); Ctrl-C again to abort", file=sys.stderr)

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


def _drive(run, args, on_event=None):
    """Run a core generator to its result, with a crop progress bar; refusals become usage errors (exit 2)."""
    from tqdm import tqdm

    from .core.checkpoint import CheckpointError

    bar = None
    try:
        while True:
            try:
                event = next(run)
            except StopIteration as done:
                return done.value
            if event["stage"] == "crop":
                if bar is None:
                    bar = tqdm(total=event["total"], desc="cropping cells", unit="file", file=sys.stderr,
                               disable=args.quiet)
                bar.update(event["done"] - bar.n)
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


def _print_training_event(event: dict) -> None:
    if event["stage"] == "data":
        cells = event["cells"]
        print(f"classes {event['classes']} (leukaemic: {event['leukemic']}), {event['crop_size']} px crops, "
              f"{event['start']}")
        for name in ("train", "val", "test"):
            print(f"  {name:<5} {sum(cells[name].values()):>6} cells  {event['groups'][name]:>5} groups  {cells[name]}")
        if event["skipped"]:
            print(f"  {len(event['skipped'])} files skipped (listed at the end)")
    elif event["stage"] == "epoch" and not event.get("stopped"):
        print(f"epoch {event['epoch']:>3}/{event['epochs']}  train loss {event['train_loss']:.4f} acc "
              f"{event['train_accuracy']:.3f}  val loss {event['val_loss']:.4f} acc {event['val_accuracy']:.3f}  "
              f"lr {event['lr']:.2g}  {event['seconds']:.0f} s{'  best' if event['improved'] else ''}", flush=True)
    elif event["stage"] == "calibrate":
        print("calibrating on the validation split", flush=True)


def expand_images(items) -> list[Path]:
    """Files as given; folders replaced by their image files (sorted, not recursive)."""
    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"folder {p} holds no images ({' '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(p)  # a missing or unreadable file fails on its own, later
    return paths


def _output_folders(images) -> list[str]:
    """``<stem>`` per image; later images with a stem already taken get ``<stem>_2``, ``<stem>_3``, ..."""
    used, names = set(), []
    for path in images:
        stem = Path(path).stem or "image"
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def _load_models(args):
    """Load the classifier (and the cellpose segmenter when used) once, failing with exit 2."""
    from .core.checkpoint import CheckpointError
    from .core.device import resolve_device
    from .core.model import DEFAULT_CLASSIFIER, load_classifier
    from .core.segment import DEFAULT_SEGMENTER, load_segmenter

    try:
        resolve_device(args.device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(str(err)) from err

    def load(kind, loader, path, default):
        try:
            return loader(path, args.device)
        except CheckpointError as err:
            hint = ""
            if path is None and not Path(default).is_file():
                hint = f"; the shipped {kind} is missing, pass --{kind} PATH"
                if kind == "segmenter":
                    hint += " or --method stain"
            raise UsageError(f"cannot load the {kind}: {err}{hint}") from err

    classifier = load("classifier", load_classifier, args.classifier, DEFAULT_CLASSIFIER)
    segmenter = None
    if args.method == "cellpose":
        segmenter = load("segmenter", load_segmenter, args.segmenter, DEFAULT_SEGMENTER)
    elif args.segmenter:
        print("note: --segmenter is not used with --method stain", file=sys.stderr)
    return classifier, segmenter


def analyze_one(path, folder: Path, *, classifier, segmenter, config, overwrite: bool) -> dict:
    """Analyse one image into ``folder``; returns its ``summary.csv`` row (never raises on a bad image)."""
    row = dict.fromkeys(SUMMARY_COLUMNS, "")
    row.update(image=str(path), stem=folder.name, status="failed")
    t0 = time.perf_counter()
    try:
        existing = [folder / f for f in OUTPUT_FILES if (folder / f).exists()]
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{path}: cannot write results, {folder} exists and is not a folder")
        if existing and not overwrite:
            raise FileExistsError(f"{path}: {existing[0]} exists; pass --overwrite to replace it")
        summary = run_and_write(path, folder, classifier=classifier, segmenter=segmenter, config=config)
    except Exception as err:  # noqa: BLE001 -- one bad image must not stop the others; reported below
        msg = str(err)
        if str(path) not in msg and Path(path).name not in msg:
            msg = f"{path}: {msg}"
        if not isinstance(err, (ValueError, OSError)):  # ImageError, CheckpointError are ValueErrors
            msg = f"{msg} ({type(err).__name__})"
        row["error"] = msg
    else:
        row.update(
            status="ok",
            leukocytes=summary["leukocytes"],
            leukemic=summary["leukemic"],
            leukemic_fraction=round(float(summary["leukemic_fraction"]), 6),
            **{key: "" if summary[key] is None else round(summary[key], 2)
               for key in ("blast_pct", "blast_pct_low", "blast_pct_high")},
            too_few_cells=int(summary["too_few_cells"]),
            segmenter=summary["segmenter"],
            classifier=summary["classifier"],
            message=summary.get("message", ""),
        )
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def run_and_write(path, folder: Path, *, classifier, segmenter, config) -> dict:
    """Read, analyse and write the four result files of one image (all or none of them replaced)."""
    import contextlib

    import numpy as np
    import tifffile
    from PIL import Image

    from .core.io import atomic_path, read_image, write_json
    from .core.pipeline import analyze_smear
    from .core.render import overlay

    path = Path(path)
    image = read_image(path)
    result = analyze_smear(image, segmenter=segmenter, classifier=classifier, config=config, name=path.name)
    summary = {**result.summary, "image_path": str(path.resolve()), "config": config.to_dict()}
    picture = overlay(image, result.labels, result.cells, classifier.info.classes, classifier.info.leukemic)
    # every file goes to a temporary beside its target; they are moved into place only once all are
    # written (summary.json last), so a failure leaves the folder as it was
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(folder / name)) for name in reversed(OUTPUT_FILES)}
        tifffile.imwrite(tmp["labels.tif"], np.asarray(result.labels, np.int32), compression="zlib")
        result.cells.to_csv(tmp["cells.csv"], index=False)
        Image.fromarray(picture).save(tmp["overlay.png"], format="PNG")
        write_json(tmp["summary.json"], summary)
    return summary


def _write_summary_csv(path: Path, rows) -> None:
    from .core.io import write_csv

    write_csv(path, rows, SUMMARY_COLUMNS)



def print_report(rows, out: Path) -> None:
    """The human-readable table of a run, on stdout."""
    width = max([len("image")] + [len(r["stem"]) for r in rows])
    print(f"{'image':<{width}}  {'leukocytes':>10}  {'leukaemic':>9}  {'fraction':>8}")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['stem']:<{width}}  {r['leukocytes']:>10}  {r['leukemic']:>9}  "
                  f"{100 * r['leukemic_fraction']:>7.1f}%")
        else:
            print(f"{r['stem']:<{width}}  {'failed':>10}")
    ok = [r for r in rows if r["status"] == "ok"]
    n = sum(r["leukocytes"] for r in ok)
    k = sum(r["leukemic"] for r in ok)
    from .core.blast_count import blast_percentage, describe

    print(f"total: {len(ok)} of {len(rows)} images analysed, {n} leukocytes, {k} blast equivalents: "
          f"{describe(blast_percentage(k, n))}; results in {out}")
    print(DISCLAIMER)


if __name__ == "__main__":
    sys.exit(main())
