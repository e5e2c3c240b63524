"""``napari-leukemia train`` (one run, or cross-validation by patient with ``--cv``) and ``evaluate``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.config import (
    CLASSIFIER_ARCHITECTURES,
    CV_FOLDS,
    DEEPAPL_LABELS,
    DEVICE_CHOICES,
    DISCLAIMER,
    EVAL_BATCH_SIZE,
    SAMPLING_CHOICES,
    SAMPLING_HELP,
    SEGMENTER_CHOICES,
    SPLITS,
    TUNE_CHOICES,
    CropConfig,
    SegmentConfig,
    TrainConfig,
)
from ..core.fit import RUN_FILES
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    StopOnInterrupt,
    UsageError,
    check_device,
    drive,
    fold_name,
    non_negative_float,
    positive_float,
    positive_int,
    segment_config,
)

DATASET_HELP = ("a folder of class sub-folders, a CSV with columns path,label[,group][,split][,stratum][,detail] (paths "
                "relative to it), or DeepAPL's manifest.csv")


def add_commands(sub) -> None:
    """The ``train`` and ``evaluate`` sub-commands (thin over :mod:`.core.fit` and :mod:`.core.scoring`)."""
    d = TrainConfig()
    t = sub.add_parser(
        "train",
        help="train a DenseNet201 classifier on a dataset",
        description="Train a DenseNet201 cell classifier on DATASET, split by group (patient): train / val "
                    "(best epoch, calibration) / test (kept aside; score it with `evaluate`). Writes DIR/{"
                    + ",".join(RUN_FILES) + "}; Ctrl-C stops cleanly, keeping the checkpoints (--resume continues). "
                    "Exit codes: 0 trained, 1 trained but some files were skipped (named), 2 bad input, 130 stopped. "
                    + DISCLAIMER,
    )
    t.add_argument("dataset", type=Path, metavar="DATASET", help=DATASET_HELP)
    t.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    t.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"at most this many (default {d.epochs})")
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    t.add_argument("--lr", type=positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    t.add_argument("--patience", type=positive_int, default=d.patience,
                   help=f"stop after this many epochs without a better validation loss (default {d.patience})")
    t.add_argument("--cpu-minutes", type=non_negative_float, default=d.cpu_minutes, metavar="M",
                   help="end training after M minutes of this process's CPU time (all threads; the epoch in progress "
                        "ends and is validated): the same budget for every architecture in a comparison (default 0: "
                        "no limit)")
    t.add_argument("--size", type=positive_int, metavar="PX",
                   help=f"crop side in pixels (default: the --init or resumed checkpoint's, else {CropConfig().size})")
    t.add_argument("--margin", type=non_negative_float, metavar="FRACTION",
                   help=f"context kept around each cell's box on each side, as a fraction of the box side (default: "
                        f"the --init or resumed checkpoint's, else {CropConfig().margin:g})")
    t.add_argument("--window", type=float, metavar="RED_CELLS",
                   help="crop a fixed window of this many red-cell diameters around each cell, keeping its size "
                        "(for cell types; 0: fit the crop to each cell; default: the --init or resumed checkpoint's, "
                        "else 0)")
    t.add_argument("--mask-outside", action="store_true", default=None,
                   help="paint what lies outside each cell's mask (grown by the margin) in the background colour, so "
                        "that touching neighbours do not enter its crop (default: the --init or resumed checkpoint's, "
                        "else off); analyses with the checkpoint crop the same way")
    t.add_argument("--leukemic-classes", nargs="+", metavar="CLASS",
                   help="the classes that are leukaemic (default: 'leukemic' for leukemic/normal data; else names "
                        "containing leukem/leukaem/blast/promyelocyte/promonocyte, or the --init checkpoint's)")
    t.add_argument("--init", metavar="CKPT", help="fine-tune this classifier checkpoint (same class list)")
    t.add_argument("--sampling", choices=SAMPLING_CHOICES, default=d.sampling,
                   help="; ".join(f"{k}: {v}" for k, v in SAMPLING_HELP.items()) + f" (default {d.sampling})")
    t.add_argument("--feature-svm", action="store_true",
                   help="also fit the seeds' SVM on hand-made features of the training cells; the checkpoint "
                        "carries it and every analysis pools its leukaemic probability with the network's (the mean "
                        "of their log-odds; two classes only; with --cv every fold's model does, so the report "
                        "measures the pool)")
    t.add_argument("--arch", choices=CLASSIFIER_ARCHITECTURES, default=None,
                   help="the backbone of a new classifier (default densenet201, the design's; resnet18 is a light "
                        "proxy to screen recipes by cross-validation on a CPU; small_cnn and cnn_transformer have no "
                        "ImageNet weights and start from random ones); --init and --resume keep the checkpoint's")
    t.add_argument("--new-head", action="store_true",
                   help="keep only the features of --init and train a new head for the dataset's "
                        "classes (another class list, e.g. --labels cell_type)")
    t.add_argument("--tune", choices=TUNE_CHOICES, default=d.tune,
                   help="which weights train: all (default), the backbone's last block and the head, or the "
                        "head alone (several times faster on a CPU)")
    t.add_argument("--imagenet", default=d.imagenet, metavar="auto|PATH|none",
                   help="ImageNet weights of the backbone: auto (torchvision's cache, if there), a .pth file, or none; "
                        "nothing is downloaded")
    t.add_argument("--cv", type=positive_int, nargs="?", const=CV_FOLDS, metavar="K",
                   help=f"cross-validate by patient instead: K folds of groups (default {CV_FOLDS}, at least 3), "
                        "balanced by diagnosis, over every group whatever its split; one run per fold in DIR/fold_<i>, each "
                        "scored on its own patients; writes DIR/{cv.json,predictions.csv,patients.csv,patients.png}. "
                        "Rerun the same command to resume fold by fold")
    t.add_argument("--fold", type=fold_name, nargs="+", metavar="I",
                   help="with --cv: train and score only fold I (DIR/fold_I, from 0), so that one process per fold can "
                        "share the cross-validation (same arguments and DIR); whichever finds every fold done writes "
                        "the report. 'final' names the final model (see --final) as one more fold: it trains "
                        "without waiting for the others and takes the report's figures when both exist")
    t.add_argument("--final", action="store_true",
                   help="with --cv: then train the model to use on every patient in DIR/final (resumable); its "
                        "classifier.safetensors carries the cross-validation's figures and error rates, which widen "
                        "a slide's blast-equivalent interval")
    t.add_argument("--extra-train", metavar="DATASET",
                   help="with --cv: cells of other sources (e.g. another lab's normal cells) added to the training of "
                        "every fold, never scored")
    t.add_argument("--score-also", action="append", default=[], metavar="DATASET",
                   help="with --cv: data no fold trains on (e.g. another lab's cells, apart from --extra-train), "
                        "scored by every fold's classifier; cv.json's other_data gives its call rate per cell "
                        "class (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the unfinished run in DIR")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or earlier run in DIR")
    t.add_argument("--seed", type=int, default=d.seed, help=f"split and training seed (default {d.seed})")
    t.add_argument("--steps-per-epoch", type=int, default=d.max_steps_per_epoch, metavar="N",
                   help="cap the training steps per epoch (default 0: the whole training set)")
    t.add_argument("--stain-jitter", type=non_negative_float, default=d.stain_jitter, metavar="SIGMA",
                   help="stain-aware augmentation: per-image scale N(1, SIGMA) and shift N(0, SIGMA) of each "
                        f"haematoxylin/eosin/DAB optical density; 0 turns it off (default {d.stain_jitter:g})")
    t.add_argument("--stain-vector-jitter", type=non_negative_float, default=d.stain_vector_jitter, metavar="SIGMA",
                   help="stain-aware augmentation: per-image N(0, SIGMA) noise on the stain colour vectors, as another "
                        f"dye batch or scanner would colour the cell; 0 turns it off (default {d.stain_vector_jitter:g})")
    t.add_argument("--lowres-p", type=non_negative_float, default=d.lowres_p, metavar="P",
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
    v.add_argument("--split", choices=(*SPLITS, "all"), default="test", help="default test")
    v.add_argument("--seed", type=int, help="split seed (default: the one the checkpoint was trained with, else 0)")
    v.add_argument("--leukemic-classes", nargs="+", metavar="LABEL",
                   help="dataset labels that are leukaemic, when they are not the checkpoint's classes")
    v.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE, help=f"default {EVAL_BATCH_SIZE}")
    v.add_argument("--overwrite", action="store_true", help="replace existing results in DIR")
    _dataset_options(v)
    v.set_defaults(func=cmd_evaluate, subparser=v)


def _dataset_options(p) -> None:
    p.add_argument("--single-cells", action="store_true",
                   help="the images are single-cell crops already (no segmentation)")
    p.add_argument("--labels", choices=DEEPAPL_LABELS, default=DEEPAPL_LABELS[0],
                   help="DeepAPL manifest: leukemic/normal (default), the pathologist's cell classes, or those "
                        "classes grouped into cell types (small classes joined)")
    p.add_argument("--method", choices=SEGMENTER_CHOICES, default=SegmentConfig().method,
                   help="how whole fields are segmented before their centre cell is cropped")
    p.add_argument("--segmenter", metavar="PATH", help="cellpose segmenter checkpoint (default: the shipped one)")
    p.add_argument("--diameter", type=positive_float, metavar="PX", help="expected leukocyte diameter in pixels")
    p.add_argument("--crops-cache", type=Path, metavar="NPZ",
                   help="read crops made before from this file and add new ones to it (segmenting is slow)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default=TrainConfig().device)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_train(args) -> int:
    """``napari-leukemia train``: see :func:`build_parser`."""
    import shlex

    imagenet = "" if args.imagenet == "none" else args.imagenet
    if imagenet not in ("", "auto") and not Path(imagenet).is_file():
        raise UsageError(f"--imagenet {imagenet}: no such file (give auto, none or a .pth file)")
    try:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                             cpu_minutes=args.cpu_minutes,
                             seed=args.seed, device=args.device, imagenet=imagenet,
                             max_steps_per_epoch=max(args.steps_per_epoch, 0), stain_jitter=args.stain_jitter,
                             stain_vector_jitter=args.stain_vector_jitter, lowres_p=args.lowres_p,
                             tune=args.tune, arch=args.arch or "",
                             sampling=args.sampling, feature_svm=args.feature_svm)
    except ValueError as err:
        raise UsageError(str(err)) from err
    check_device(args.device)
    if args.cv is not None:
        return _cross_validate(args, config)
    if args.extra_train or args.score_also or args.final or args.fold:
        raise UsageError("--extra-train, --score-also, --fold and --final belong to a cross-validation (--cv K)")
    from ..core.fit import fit_classifier

    with StopOnInterrupt() as stop:
        run = fit_classifier(args.dataset, args.out, config=config, **_crop_options(args),
                             single_cells=args.single_cells, deepapl_labels=args.labels, leukemic=args.leukemic_classes,
                             init=args.init, new_head=args.new_head, resume=args.resume, overwrite=args.overwrite,
                             segment=segment_config(args),
                             segmenter=args.segmenter, crops_cache=args.crops_cache,
                             command=shlex.join(["napari-leukemia", *args.argv]), should_stop=stop)
        try:
            result = drive(run, args, on_event=print_training_event)
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


def _named(datasets: list[str]) -> dict[str, str]:
    """Datasets by a short name: the file's stem, or its folder's name for a ``manifest.csv``."""
    named = {}
    for d in datasets:
        path = Path(d)
        name = path.parent.name if path.name == "manifest.csv" else path.stem
        if name in named:
            raise UsageError(f"--score-also {d}: another dataset is named {name!r} too; give files of other names")
        named[name] = d
    return named


def _cross_validate(args, config) -> int:
    """``napari-leukemia train --cv K``: see :func:`~.core.crossval.cross_validate`."""
    import shlex

    from ..core.crossval import cross_validate

    def on_event(event):
        if event.stage in ("fold", "report", "other", "final"):
            print(event.message, flush=True)
        else:
            print_training_event(event)

    if args.final and args.fold:
        raise UsageError("--final trains the final model after every fold; with --fold, name it as a fold: "
                         "--fold ... final")
    folds = None if args.fold is None else [f for f in args.fold if f != "final"]
    final = args.final or "final" in (args.fold or [])
    with StopOnInterrupt() as stop:
        run = cross_validate(args.dataset, args.out, k=args.cv, config=config, **_crop_options(args),
                             single_cells=args.single_cells, deepapl_labels=args.labels,
                             leukemic=args.leukemic_classes, init=args.init, new_head=args.new_head,
                             overwrite=args.overwrite, segment=segment_config(args), segmenter=args.segmenter,
                             crops_cache=args.crops_cache, command=shlex.join(["napari-leukemia", *args.argv]),
                             extra_train=args.extra_train, score_also=_named(args.score_also), final=final,
                             only_folds=folds, should_stop=stop)
        try:
            result = drive(run, args, on_event=on_event)
        except (FloatingPointError, MemoryError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
    if result["stopped"]:
        where = "in the final model's training" if "report" in result else f"after {result['folds_done']} complete fold(s)"
        print(f"stopped {where}; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if "waiting_for" in result:
        print(f"{', '.join(map(str, args.fold))} done; the report waits for fold(s) "
              f"{', '.join(map(str, result['waiting_for']))}: the last run to finish writes it"
              + (" and adds its figures to the final model" if final else ""))
        return EXIT_OK
    r = result["report"]
    o, e = r["pooled"], r["patient_errors"]
    print(f"{r['n_cells']} cells of {r['n_patients']} patients, each scored by the fold model that never saw it: "
          f"ROC-AUC {o['roc_auc']:.3f}, sensitivity at 95% specificity {o['sensitivity_at_95_specificity']:.3f}, "
          f"balanced accuracy {o['balanced_accuracy']:.3f}, ECE {o['ece']:.3f}")
    print(f"per patient, blast-equivalent %: mean error {e['mean_abs_error']:.1f} points, largest "
          f"{e['max_abs_error']:.1f}, {e['over_10_points']} patient(s) off by more than 10")
    a = r["patient_errors_adjusted"]
    print(f"corrected for the classifier's error rates (adjusted count; the product reports the count): mean error "
          f"{a['mean_abs_error']:.1f} points, largest {a['max_abs_error']:.1f}, {a['over_10_points']} off by more than 10")
    for name, d in r.get("other_data", {}).items():
        print(f"{name}: {d['n_cells']} cells no fold trained on, {100 * d['called_leukemic']:.1f}% called blast "
              "equivalent (mean over the fold models)")
    print(f"report: {Path(args.out) / 'cv.json'}, {Path(args.out) / 'patients.csv'}, {Path(args.out) / 'patients.png'}")
    if "final" in result:
        print(f"final model, trained on every patient, carrying these figures: {result['final']}")
    print(DISCLAIMER)
    return EXIT_OK


def cmd_evaluate(args) -> int:
    """``napari-leukemia evaluate``: see :func:`build_parser`."""
    target = Path(args.out) / "metrics.json"
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
    check_device(args.device)
    from ..core.checkpoint import CheckpointError
    from ..core.model import load_classifier
    from ..core.scoring import evaluate_dataset

    try:
        classifier = load_classifier(args.classifier, args.device)
    except CheckpointError as err:
        raise UsageError(f"cannot load the classifier: {err}") from err
    with StopOnInterrupt() as stop:
        run = evaluate_dataset(args.dataset, classifier, args.out, split=args.split, single_cells=args.single_cells,
                               deepapl_labels=args.labels, truth_leukemic=args.leukemic_classes, seed=args.seed,
                               segment=segment_config(args), segmenter=args.segmenter, crops_cache=args.crops_cache,
                               device=args.device, batch_size=args.batch_size, should_stop=stop)
        report = drive(run, args)
    if report is None:
        print("stopped: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    for message in report["skipped"]:
        print(f"skipped: {message}", file=sys.stderr)
    if report["split_matches_training"] is False:
        print(f"warning: this {args.split} split differs from the one the classifier was trained with (other data, "
              "seed or settings): its cells may have been seen in training", file=sys.stderr)
    o = report["overall"]
    (tn, fp), (fn, tp) = o["confusion_matrix"]
    if not (tn + fp) or not (fn + tp):  # one truth only: no ROC, the call rate is the figure
        which, called = ("normal", fp / (tn + fp)) if tn + fp else ("leukaemic", tp / (fn + tp))
        print(f"{report['n_cells']} cells ({args.split}), all {which}: ROC-AUC and balanced accuracy are undefined "
              f"with one class; {100 * called:.1f}% called leukaemic; per label in {Path(args.out) / 'metrics.json'}")
        for label, row in report.get("per_detail", report["per_label"]).items():
            print(f"  {label:<24} {row['n']:>6} cells  {100 * row['called_leukemic']:5.1f}% called leukaemic")
        print(DISCLAIMER)
        return EXIT_FAILED if report["skipped"] else EXIT_OK
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


def print_training_event(event) -> None:
    """Print a :func:`~..core.fit.fit_classifier` event (:class:`~..core.events.Event`) as a line of the log."""
    e = event.payload
    if event.stage == "data":
        cells = e["cells"]
        print(f"classes {e['classes']} (leukaemic: {e['leukemic']}), {e['crop_size']} px crops, {e['start']}")
        for name in ("train", "val", "test"):
            print(f"  {name:<5} {sum(cells[name].values()):>6} cells  {e['groups'][name]:>5} groups  {cells[name]}")
        if e["skipped"]:
            print(f"  {len(e['skipped'])} files skipped (listed at the end)")
    elif event.stage == "epoch" and not e.get("stopped"):
        print(f"epoch {e['epoch']:>3}/{event.total}  train loss {e['train_loss']:.4f} acc "
              f"{e['train_accuracy']:.3f}  val loss {e['val_loss']:.4f} acc {e['val_accuracy']:.3f}  "
              f"lr {e['lr']:.2g}  {e['seconds']:.0f} s{'  best' if e['improved'] else ''}", flush=True)
    elif event.stage == "calibrate" or (event.stage == "features" and event.done == event.total):
        print(event.message, flush=True)


def _crop_options(args) -> dict:
    """The crop settings asked for on the command line (None: the checkpoint's or the default)."""
    return {"size": args.size, "margin": args.margin, "window": args.window, "mask_outside": args.mask_outside}
