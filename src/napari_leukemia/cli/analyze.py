"""``napari-leukemia analyze`` (smear images -> results) and ``evaluate-segmentation`` (a segmenter against boxes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.batch import SUMMARY_CSV
from ..core.config import BOX_LABEL, DEVICE_CHOICES, DISCLAIMER, MATCH_IOU, SEGMENTER_CHOICES
from ..core.results import OUTPUT_FILES
from ..core.slide_analysis import SLIDE_FILES
from ..samples import SAMPLES
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    IMAGE_SUFFIXES,
    StopOnInterrupt,
    UsageError,
    check_device,
    expand_images,
    positive_float,
    positive_int,
)


def add_commands(sub) -> None:
    """The ``analyze`` and ``evaluate-segmentation`` sub-commands."""
    a = sub.add_parser(
        "analyze",
        help="segment and classify every leukocyte of smear images",
        description=(
            "Segment and classify every leukocyte of each IMAGE. Writes DIR/<stem>/{"
            + ",".join(OUTPUT_FILES) + "} per image and DIR/summary.csv. Whole slides (pyramidal TIFF, OME-TIFF, SVS, "
            "NDPI, or over 8,000 px a side) are analysed tile by tile in bounded memory into DIR/<stem>/{"
            + ",".join(SLIDE_FILES) + "} (OME-Zarr labels, no Grad-CAM; --resume continues a killed slide). "
            + DISCLAIMER
        ),
    )
    a.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"image files, or folders of them ({' '.join(IMAGE_SUFFIXES)}; not recursive)")
    a.add_argument("--sample", action="append", choices=sorted(SAMPLES), default=[],
                   help="add a bundled sample smear (may be repeated)")
    a.add_argument("--out", required=True, metavar="DIR", type=Path, help="output folder")
    a.add_argument("--device", choices=DEVICE_CHOICES, default=DEVICE_CHOICES[0],
                   help="where the networks run (default: auto, CUDA when available)")
    a.add_argument("--no-gradcam", dest="gradcam", action="store_false",
                   help="skip the Grad-CAM explanation (faster)")
    a.add_argument("--segmenter", metavar="PATH", help="cellpose segmenter checkpoint (default: the shipped one)")
    a.add_argument("--classifier", metavar="PATH|NAME", help="classifier checkpoint, or a shipped one by name "
                   "(leukemic: leukaemic vs normal, the default; cell_type: DeepAPL cell types)")
    a.add_argument("--method", choices=SEGMENTER_CHOICES, default=SEGMENTER_CHOICES[0],
                   help="segmentation: the trained cellpose model (default) or the stain-based baseline")
    a.add_argument("--diameter", type=diameter_px, metavar="PX",
                   help="expected leukocyte diameter in pixels (default: estimated from the stain)")
    a.add_argument("--red-cell-diameter", type=positive_float, metavar="PX",
                   help="red-cell diameter in pixels, the scale of a cell-type classifier's crops (default: "
                        "measured on each image)")
    a.add_argument("--single-cell", action="store_true",
                   help="each image is one cell at its centre (CellaVision exports, single-cell sets; any magnification, "
                        "a removed black or white background too): only that cell is classified, found by segmentation "
                        "or else taken as a centred crop (cells.csv and summary.csv say which: found_by); images are "
                        "classified in batches")
    a.add_argument("--overwrite", action="store_true", help="replace existing results in DIR")
    a.add_argument("--resume", action="store_true",
                   help="continue a run in DIR: images that summary.csv lists as done (with complete results) are "
                        "skipped, the others analysed")
    where = a.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="analyse N images at a time on a local dask.distributed cluster of N single-threaded "
                            "worker processes (several cores for many small images; default: one process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="analyse on a running dask.distributed cluster (tcp://host:8786; dask-jobqueue, "
                            "Kubernetes, Coiled ...) whose workers see the same files; models load on each worker")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_analyze, subparser=a)
    e = sub.add_parser(
        "evaluate-segmentation",
        help="score a segmenter against leukocyte boxes (Pascal VOC) or expert masks of whole cells",
        description="Segment each IMAGE and either match its cells to the boxes in VOC_DIR/<stem>.xml (IoU >= --iou; "
                    "precision, recall, F1, mean box IoU) or compare its centre cell with an expert mask (--masks: "
                    "IoU, and the share of nucleus and cytoplasm kept, with pictures of the worst cells in "
                    "DIR/worst.png). Writes DIR/segmentation_metrics.json.",
    )
    e.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    truth = e.add_mutually_exclusive_group(required=True)
    truth.add_argument("--boxes", type=Path, metavar="VOC_DIR", help="folder of Pascal VOC XML files")
    truth.add_argument("--masks", nargs="?", const="", metavar="MASK_DIR",
                       help="expert masks, one cell per image at its centre: <stem>_mask.<ext> beside each image, or "
                            "<stem>[_mask].<ext> in MASK_DIR (any value above 0 is the cell; two levels: cytoplasm "
                            "and nucleus)")
    e.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    e.add_argument("--method", choices=SEGMENTER_CHOICES, default=SEGMENTER_CHOICES[0])
    e.add_argument("--segmenter", metavar="PATH", help="cellpose segmenter checkpoint (default: the shipped one)")
    e.add_argument("--diameter", type=diameter_px, metavar="PX",
                   help="expected leukocyte diameter in pixels (at least 8; default: estimated from the stain)")
    e.add_argument("--single-cell", action="store_true",
                   help="with --masks: find each image's cell as analyze --single-cell does (the image framed, "
                        "the scale searched when no cell lies at the centre)")
    e.add_argument("--iou", type=iou_fraction, default=MATCH_IOU, help=f"IoU for a match, in (0, 1] (default {MATCH_IOU})")
    e.add_argument("--label", default=BOX_LABEL, help=f"object name of the boxes, in any letter case (default {BOX_LABEL})")
    e.add_argument("--device", choices=DEVICE_CHOICES, default=DEVICE_CHOICES[0])
    e.add_argument("--overwrite", action="store_true", help="replace an existing metrics file")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate_segmentation, subparser=e)


def cmd_analyze(args) -> int:
    """``napari-leukemia analyze``: see :func:`add_commands` and :func:`~..core.batch.analyze_images`."""
    from ..samples import sample_path

    images = expand_images(args.images) + [sample_path(name) for name in args.sample]
    if not images:
        raise UsageError("no images given: pass IMAGE files or folders, or --sample NAME")
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise UsageError("--resume keeps finished results and --overwrite replaces them: give one")
    summary_csv = out / SUMMARY_CSV
    if summary_csv.exists() and not (args.overwrite or args.resume):
        raise UsageError(f"{summary_csv} exists; pass --resume to continue that run, --overwrite to replace it, "
                         "or choose another --out")
    from ..core.batch import check_writable

    try:
        check_writable(out)  # before the models load and any image is analysed
    except (FileExistsError, PermissionError) as err:
        raise UsageError(str(err)) from err

    # heavy imports only now, so that --help stays fast
    from ..core.config import AnalysisConfig, SegmentConfig

    try:
        config = AnalysisConfig(device=args.device, gradcam=args.gradcam, red_cell_diameter=args.red_cell_diameter,
                                segment=SegmentConfig(method=args.method, diameter=args.diameter),
                                single_cell=args.single_cell)
    except ValueError as err:
        raise UsageError(str(err)) from err
    on_cluster = args.workers is not None or args.scheduler is not None
    classifier, segmenter = _load_models(args, files_only=on_cluster)  # a cluster's workers load them

    from tqdm import tqdm

    from ..core.batch import analyze_images

    client = _start_client(args) if on_cluster else None
    bar = tqdm(total=len(images), desc="analyze", unit="image", file=sys.stderr, disable=args.quiet)
    rows, notes, stopped = [], [], False
    try:
        with StopOnInterrupt(what="after the image in progress; finished images are kept") as stop:
            run = analyze_images(images, out, classifier=classifier, segmenter=segmenter, config=config,
                                 overwrite=args.overwrite, resume=args.resume, should_stop=stop, client=client)
            while True:
                try:
                    event = next(run)
                except StopIteration as done:
                    rows, stopped = done.value["rows"], done.value["stopped"]
                    break
                row = event.payload["row"]
                rows.append(row)
                if event.message:
                    notes.append(event.message)
                if row["error"]:
                    tqdm.write(f"error: {row['error']}", file=sys.stderr)
                elif event.payload["skipped"]:
                    tqdm.write(f"done before: {row['image']}", file=sys.stderr)
                bar.update(event.done - bar.n)
    except (FileExistsError, PermissionError, ValueError) as err:  # refused before any image was analysed
        raise UsageError(str(err)) from err
    except KeyboardInterrupt:
        stopped = True
    finally:
        bar.close()
        if client is not None:
            from ..core.cluster import close_client

            close_client(client)
    if stopped:
        print(f"interrupted: {len(rows)} of {len(images)} images done; {summary_csv} lists them (continue with "
              "--resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    for message in notes:
        print(f"note: {message}", file=sys.stderr)
    print_report(rows, out, _cv_rates(classifier))
    return EXIT_FAILED if any(r["status"] != "ok" for r in rows) else EXIT_OK


def cmd_evaluate_segmentation(args) -> int:
    """``napari-leukemia evaluate-segmentation``: see :func:`build_parser`."""

    images = expand_images(args.images)
    target = Path(args.out) / "segmentation_metrics.json"
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
    if args.masks is not None:
        return _evaluate_masks(args, images, target)
    if args.single_cell:
        raise UsageError("--single-cell scores the centre cell of each image: give --masks")
    if not Path(args.boxes).is_dir():
        raise UsageError(f"--boxes {args.boxes} is not a folder")
    from tqdm import tqdm

    from ..core.boxes import check_voc_label, score_segmentation
    from ..core.io import write_json

    try:
        check_voc_label(images, args.boxes, args.label)  # before the segmenter loads
    except ValueError as err:
        raise UsageError(f"--label {args.label}: {err}") from err
    segment, model = _segmenter(args)
    bar = tqdm(total=len(images), desc="evaluate", unit="image", file=sys.stderr, disable=args.quiet)
    report = score_segmentation(images, args.boxes, segment, iou_threshold=args.iou, name=args.label,
                                progress=lambda _: bar.update())
    bar.close()
    report["segmenter"] = "stain-based" if model is None else Path(model.path).name
    write_json(target, report)
    for err in report["errors"]:
        print(f"error: {err}", file=sys.stderr)
    print(f"{report['images']} images, {report['tp'] + report['fn']} boxes: precision {report['precision']:.3f}, "
          f"recall {report['recall']:.3f}, F1 {report['f1']:.3f}, mean IoU {report['mean_iou']:.3f}; {target}")
    return EXIT_FAILED if report["errors"] else EXIT_OK


def _segmenter(args):
    """``(segment, model)`` of ``evaluate-segmentation``'s settings: ``labels = segment(rgb)``; model None for stain."""
    import functools

    from ..core.checkpoint import CheckpointError
    from ..core.config import SegmentConfig
    from ..core.segment import load_segmenter, segment_leukocytes

    model = None
    if args.method == "cellpose":
        try:
            model = load_segmenter(args.segmenter, args.device)
        except (CheckpointError, RuntimeError, ValueError) as err:
            raise UsageError(f"cannot load the segmenter: {err}") from err
    cfg = SegmentConfig(method=args.method, diameter=args.diameter)
    if args.single_cell:
        from ..core.single_cell import find_centre_cell

        return (lambda image: find_centre_cell(image, cfg, model=model, device=args.device)[0]), model
    return functools.partial(segment_leukocytes, cfg=cfg, model=model), model


def _evaluate_masks(args, images, target: Path) -> int:
    """``evaluate-segmentation --masks``: the centre cell of each image against its expert mask."""

    from tqdm import tqdm

    from ..core.io import write_json
    from ..core.mask_eval import mask_pairs, plot_worst, score_masks

    if args.masks and not Path(args.masks).is_dir():
        raise UsageError(f"--masks {args.masks} is not a folder")
    try:
        pairs = mask_pairs(images, Path(args.masks) if args.masks else None)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    segment, model = _segmenter(args)
    bar = tqdm(total=len(pairs), desc="evaluate", unit="image", file=sys.stderr, disable=args.quiet)
    report = score_masks(pairs, segment, progress=lambda *_: bar.update())
    bar.close()
    report["segmenter"] = "stain-based" if model is None else Path(model.path).name
    report["diameter"] = args.diameter
    report["single_cell"] = args.single_cell
    write_json(target, report)
    if report["per_image"]:
        plot_worst(report, {str(i): m for i, m in pairs}, segment, target.parent / "worst.png")
    for err in report["errors"]:
        print(f"error: {err}", file=sys.stderr)
    parts = "".join(f", {name} kept {report[f'mean_{name}_kept']:.3f}" for name in ("nucleus", "cytoplasm")
                    if f"mean_{name}_kept" in report)
    parts += "".join(f", {name} IoU {report[f'mean_{name}_iou']:.3f}" for name in ("nucleus", "cytoplasm")
                     if f"mean_{name}_iou" in report)
    print(f"{report['images']} cells: centre cell found in {100 * report['found']:.0f}%, mean IoU "
          f"{report.get('mean_iou', 0):.3f} (median {report.get('median_iou', 0):.3f}){parts}; {target}")
    return EXIT_FAILED if report["errors"] else EXIT_OK


def diameter_px(text: str) -> float:
    """``--diameter``: a number of pixels, at least :data:`~..core.segment.MIN_DIAMETER` (argparse type)."""
    from ..core.segment import MIN_DIAMETER

    value = positive_float(text)
    if value < MIN_DIAMETER:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_DIAMETER:g} px, got {text!r} (cellpose enlarges the image by its training "
            "diameter over this one: for tinier cells, without bound until memory runs out)")
    return value


def iou_fraction(text: str) -> float:
    """``--iou``: a number in (0, 1] (argparse type)."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (an intersection over union), got {text!r}")
    return value


def _start_client(args):
    """A dask.distributed client for ``--workers`` / ``--scheduler``; exit 2 if unreachable."""
    from ..core.cluster import start_client

    try:
        return start_client(workers=args.workers, scheduler=args.scheduler)
    except (OSError, ValueError) as err:  # an address that answers nothing: OSError (TimeoutError included)
        raise UsageError(f"cannot reach the dask scheduler {args.scheduler}: {err}" if args.scheduler
                         else f"cannot start {args.workers} local dask workers: {err}") from err


def _load_models(args, files_only: bool = False):
    """Load the classifier (and the cellpose segmenter when used) once, failing with exit 2; with ``files_only``,
    check their files and return their paths (:func:`~..core.cluster.checked_model_file`)."""
    from ..core.checkpoint import CheckpointError
    from ..core.cluster import checked_model_file
    from ..core.model import DEFAULT_CLASSIFIER, load_classifier
    from ..core.segment import DEFAULT_SEGMENTER, load_segmenter

    check_device(args.device)

    def load(kind, loader, path, default):
        try:
            return checked_model_file(path, kind) if files_only else loader(path, args.device)
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


def _cv_rates(classifier) -> dict | None:
    """:func:`~..core.blast_count.classifier_rates` of the loaded classifier, or of the checkpoint file a cluster's
    workers load (its metadata, without building the network)."""
    from ..core.blast_count import classifier_rates
    from ..core.checkpoint import read_safetensors
    from ..core.model import CLASSIFIER_FORMAT, ClassifierInfo

    if hasattr(classifier, "info"):
        return classifier_rates(classifier.info)
    meta, _ = read_safetensors(Path(classifier), CLASSIFIER_FORMAT)
    return classifier_rates(ClassifierInfo.from_metadata(meta, classifier))


def print_report(rows, out: Path, rates: dict | None = None) -> None:
    """The human-readable table of a run, on stdout (rows as written, or as read back from ``summary.csv``), its
    intervals widened by the classifier's ``rates`` as in the rows' summaries (:func:`~..core.blast_count.call_counts`)."""
    from ..core.blast_count import blast_percentage, describe

    width = max([len("image")] + [len(r["stem"]) for r in rows])
    print(f"{'image':<{width}}  {'leukocytes':>10}  {'blast eq.':>9}  {'%':>6}  95% interval")
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['stem']:<{width}}  {'failed':>10}")
            continue
        n, k = int(r["leukocytes"]), int(r["leukemic"])
        c = blast_percentage(k, n, rates)
        interval = "" if c["blast_pct"] is None else f"{c['blast_pct_low']:.1f}-{c['blast_pct_high']:.1f}%"
        pct = "" if c["blast_pct"] is None else f"{c['blast_pct']:.1f}"
        print(f"{r['stem']:<{width}}  {n:>10}  {k:>9}  {pct:>6}  {interval}{'  (too few cells)' * c['too_few_cells'] * (n > 0)}")
    n = sum(int(r["leukocytes"]) for r in ok)
    k = sum(int(r["leukemic"]) for r in ok)
    print(f"total: {len(ok)} of {len(rows)} images analysed, {n} leukocytes, {k} blast equivalents: "
          f"{describe(blast_percentage(k, n, rates))}; results in {out}")
    print(DISCLAIMER)
