"""bioimage.io: a classifier checkpoint as a bioimage.io model package (bioimageio.spec 0.5), tested on its own sample.

The package holds the ONNX export of :mod:`.onnx_backend` with a softmax over ``logits / temperature`` appended to
its graph, so that its one output, ``probabilities`` ``(N, C)``, is the checkpoint's calibrated class probabilities
(:func:`~.predict.probabilities`). Its one input, ``crops`` ``(N, 3, S, S)`` float32, is cells cut out by
:func:`~.preprocess.crop_cells` and normalised by :func:`~.preprocess.to_tensor` (scaled to [0, 1], minus the crop
settings' mean, divided by their std, per RGB channel). The test input is every cell the shipped segmenter finds on
the bundled DeepAPL sample, through that same path, and the test output is the package's ONNX model run on it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from .config import DISCLAIMER
from .model import Classifier

INPUT, OUTPUT = "crops", "probabilities"
#: The tolerance written into the package for reproducing its test output (probabilities, absolute and relative).
TOLERANCE = 1e-4
PROJECT = "napari-leukemia contributors"
CODE_LICENSE = "BSD-3-Clause"
#: The papers of the backbones (cited by architecture-name prefix) and of the data the shipped models learned from.
ARCHITECTURE_CITES = {
    "densenet": ("Huang G, Liu Z, van der Maaten L, Weinberger KQ. Densely Connected Convolutional Networks. "
                 "CVPR 2017.", "10.1109/CVPR.2017.243"),
    "resnet": ("He K, Zhang X, Ren S, Sun J. Deep Residual Learning for Image Recognition. CVPR 2016.",
               "10.1109/CVPR.2016.90"),
    "vgg": ("Simonyan K, Zisserman A. Very Deep Convolutional Networks for Large-Scale Image Recognition. ICLR 2015.",
            "10.48550/arXiv.1409.1556"),
    "efficientnet": ("Tan M, Le QV. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks. ICML "
                     "2019.", "10.48550/arXiv.1905.11946"),
    "cnn_transformer": ("Vaswani A et al. Attention Is All You Need. NeurIPS 2017.", "10.48550/arXiv.1706.03762"),
}
DEEPAPL_CITE = ("Sidhom J-W et al. Deep learning for diagnosis of acute promyelocytic leukemia via recognition of "
                "genomically imprinted morphologic features. npj Precision Oncology 5:38 (2021); data and code: "
                "github.com/sidhomj/DeepAPL (MIT licence).", "10.1038/s41698-021-00179-y")


def probability_model(classifier: Classifier):
    """The ONNX model of :func:`~.onnx_backend.onnx_model` whose output is ``softmax(logits / temperature)``."""
    import onnx
    from onnx import TensorProto, helper

    from .onnx_backend import OUTPUT as LOGITS
    from .onnx_backend import onnx_model

    model = onnx_model(classifier)
    graph = model.graph
    graph.initializer.append(helper.make_tensor("temperature", TensorProto.FLOAT, [], [classifier.info.temperature]))
    graph.node.extend([helper.make_node("Div", [LOGITS, "temperature"], ["scaled_logits"], name="calibration"),
                       helper.make_node("Softmax", ["scaled_logits"], [OUTPUT], axis=1, name="softmax")])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", len(classifier.info.classes)]))
    meta = {p.key: p.value for p in model.metadata_props}
    meta["format"] = "napari-leukemia-classifier-onnx-probabilities"
    meta["output"] = json.dumps({"name": OUTPUT, "shape": ["N", len(classifier.info.classes)],
                                 "probabilities": "softmax(logits / temperature) over 'classes' (in the graph)"})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def sample_crops(classifier: Classifier, image=None, *, segmenter=None) -> np.ndarray:
    """Every cell of ``image`` (default: the bundled DeepAPL sample) through the analysis path: the leukocyte
    segmenter (cellpose, ``segmenter`` or the shipped one, on the CPU), then :func:`~.preprocess.crop_cells` at the
    classifier's crop settings. Returns the uint8 crops ``(N, S, S, 3)``, the cell nearest the centre first."""
    from .config import SegmentConfig
    from .preprocess import centre_cell, crop_cells
    from .segment import load_segmenter, segment_leukocytes

    if image is None:
        from ..samples import load_sample

        image = load_sample("deepapl")
    model = segmenter if hasattr(segmenter, "eval") else load_segmenter(segmenter, "cpu")
    labels = segment_leukocytes(image, SegmentConfig(), model=model, device="cpu")
    if labels.max() == 0:
        raise ValueError("the segmenter found no leukocyte on the sample image; give another image")
    crops = crop_cells(image, labels, classifier.info.crop)
    first = centre_cell(labels)
    order = sorted(range(len(crops.labels)), key=lambda i: crops.labels[i] != first)
    return np.ascontiguousarray(crops.images[order])


def export_bioimageio(classifier: Classifier, path, *, image=None, segmenter=None, overwrite: bool = False) -> Path:
    """Write ``classifier`` as a bioimage.io model package (a ``.zip``), atomically.

    Parameters
    ----------
    classifier : Classifier
        A loaded torch classifier (:func:`~.model.load_classifier`).
    path : path
        The ``.zip`` to write.
    image : (H, W, 3) ndarray of uint8, optional
        The field whose cells make the test input (default: the bundled DeepAPL sample).
    segmenter : path or cellpose model, optional
        Default: the shipped leukocyte segmenter.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is off.
    """
    import onnx
    import onnxruntime as ort
    from bioimageio.spec import save_bioimageio_package

    from .io import atomic_path
    from .preprocess import to_tensor

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite (--overwrite) to replace it")
    crops = sample_crops(classifier, image, segmenter=segmenter)
    with tempfile.TemporaryDirectory(prefix="bioimageio-") as tmp:
        d = Path(tmp)
        model = probability_model(classifier)
        onnx.save(model, str(d / "classifier.onnx"))
        x = to_tensor(crops, classifier.info.crop).numpy().astype(np.float32)
        session = ort.InferenceSession(str(d / "classifier.onnx"), providers=["CPUExecutionProvider"])
        y = session.run([OUTPUT], {INPUT: x})[0].astype(np.float32)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", y)
        _cover(crops[0], d / "cover.png")
        (d / "README.md").write_text(package_readme(classifier, n_cells=len(crops)))
        descr = model_description(classifier, d)
        with atomic_path(path) as out:
            save_bioimageio_package(descr, output_path=out, weights_priority_order=["onnx"])
    return path


def model_description(classifier: Classifier, d: Path):
    """The ``ModelDescr`` of a package whose files (:func:`export_bioimageio`) lie in folder ``d``."""
    from bioimageio.spec.model import v0_5 as bio

    from .onnx_backend import OPSET

    _fix_spec_serializers()

    info = classifier.info
    crop = info.crop
    size = crop.size
    cites = [bio.CiteEntry(text=text, doi=bio.Doi(doi)) for prefix, (text, doi) in ARCHITECTURE_CITES.items()
             if info.architecture.startswith(prefix)]
    cites.append(bio.CiteEntry(text=DEEPAPL_CITE[0], doi=bio.Doi(DEEPAPL_CITE[1])))
    inputs = [bio.InputTensorDescr(
        id=bio.TensorId(INPUT),
        description=(f"RGB crops from napari-leukemia's crop_cells, scaled to [0, 1], minus mean {_triple(crop.mean)}, "
                     f"over std {_triple(crop.std)}"),
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=["R", "G", "B"]),
              bio.SpaceInputAxis(id=bio.AxisId("y"), size=size), bio.SpaceInputAxis(id=bio.AxisId("x"), size=size)],
        test_tensor=bio.FileDescr(source=d / "test_input.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32"))]
    outputs = [bio.OutputTensorDescr(
        id=bio.TensorId(OUTPUT),
        description=f"calibrated class probabilities: softmax(logits / {info.temperature:.6g}) over the channels",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=list(info.classes))],
        test_tensor=bio.FileDescr(source=d / "test_output.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))]
    tolerance = bio.ReproducibilityTolerance(relative_tolerance=TOLERANCE, absolute_tolerance=TOLERANCE,
                                             mismatched_elements_per_million=0)
    return bio.ModelDescr(
        name=f"napari-leukemia {info.architecture} {' vs '.join(info.classes)}"[:128],
        description=(f"Classifies one Wright-Giemsa-stained leukocyte crop ({size} px, from napari-leukemia's "
                     f"crop_cells; mean {list(crop.mean)}, std {list(crop.std)}) into {', '.join(info.classes)}. "
                     + DISCLAIMER),
        authors=[bio.Author(name=PROJECT)],
        cite=cites,
        license=bio.LicenseId(CODE_LICENSE),
        documentation=bio.FileDescr(source=d / "README.md"),
        covers=[bio.FileDescr(source=d / "cover.png")],
        tags=["napari-leukemia", "classification", "blood-smear", "leukemia", "leukocyte", "wright-giemsa",
              "onnx", info.architecture, "2d", "rgb"],
        inputs=inputs,
        outputs=outputs,
        weights=bio.WeightsDescr(onnx=bio.OnnxWeightsDescr(source=d / "classifier.onnx",
                                                           opset_version=OPSET)),
        config=bio.Config(bioimageio=bio.BioimageioConfig(reproducibility_tolerance=[tolerance])),
    )


def package_readme(classifier: Classifier, *, n_cells: int) -> str:
    """The package's documentation: what goes in and out, where the weights come from, and their limits."""
    info = classifier.info
    prov = info.provenance or {}
    data = prov.get("data") or {}
    source = str(data.get("source", "not recorded"))
    deepapl = "deepapl" in f"{source} {prov.get('command', '')}".lower()  # a cross-validation records "samples"
    cv = prov.get("cross_validation") or {}
    val = cv.get("pooled") or prov.get("val_metrics") or {}
    figures = ", ".join(f"{k} {val[k]:.3f}" for k in ("roc_auc", "balanced_accuracy", "sensitivity_at_95_specificity",
                                                        "ece") if isinstance(val.get(k), (int, float)))
    measured = (f"{cv.get('k')}-fold cross-validation over {cv.get('n_patients')} patients, each scored by a model "
                "that never saw it" if cv.get("pooled") else "Validation split (patients never seen in training)")
    if figures and classifier.feature_svm is not None:
        figures += (" (napari-leukemia's pool of this network with a feature SVM on hand-made cell features, which "
                    "this package does not hold: the network alone scores lower)")
    crop = info.crop
    lines = [
        f"# napari-leukemia classifier: {info.architecture}, {' / '.join(info.classes)}", "",
        f"**{DISCLAIMER}** Research use only, not a diagnostic device: no result of this model may be used to "
        "diagnose or treat anyone.", "",
        "## Input and output", "",
        f"- input `{INPUT}`: `(N, 3, {crop.size}, {crop.size})` float32, RGB cell crops cut out of a smear by "
        "napari-leukemia's `napari_leukemia.core.preprocess.crop_cells` with the settings below, scaled to [0, 1], "
        f"minus mean {list(crop.mean)}, divided by std {list(crop.std)}, per channel (`core.preprocess.to_tensor`). "
        f"Crop settings: `{json.dumps(crop.to_dict())}`.",
        f"- output `{OUTPUT}`: `(N, {len(info.classes)})`, softmax(logits / {info.temperature:.6g}) over "
        f"{list(info.classes)} (the temperature is the checkpoint's calibration, inside the ONNX graph); "
        f"p_leukemic is the sum over {list(info.leukemic)}.",
        f"- test input: the {n_cells} cell(s) napari-leukemia's shipped cellpose segmenter finds on its bundled "
        "sample `deepapl_blast.jpg` (DeepAPL Patient_02, a pathologist-signed blast at the centre, first), cropped "
        "as above; the test output is this package's ONNX model on them.", "",
        "## Provenance", "",
        f"- training data: `{source}`" + (f", cells {json.dumps(data['cells'])}" if "cells" in data else ""),
        f"- command: `{prov.get('command', 'not recorded')}`",
        f"- software: `{json.dumps(prov.get('software', {}))}`, date {prov.get('date', 'not recorded')}", "",
        "## Validation", "",
        (f"{measured}: {figures}." if figures else
         "No validation figures are recorded in this checkpoint."),
        " The full evaluation on held-out patients is in napari-leukemia's docs/model_card.md.", "",
        "## Licences", "",
        f"- code and this package: {CODE_LICENSE} (napari-leukemia).",
        ("- the weights were learned from DeepAPL images (Sidhom et al. 2021, github.com/sidhomj/DeepAPL), released "
         "under the MIT licence, Copyright (c) 2019 John-William Sidhom; the bundled sample image is from the same "
         "source and licence." if deepapl else
         "- the weights were learned from the data named above; their use follows that data's licence."), "",
    ]
    return "\n".join(lines)


def _triple(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _cover(crop: np.ndarray, path: Path) -> None:
    """A 2:1 cover: the test input's first cell, as cut out, beside its grey levels."""
    from PIL import Image

    side = 256
    cell = Image.fromarray(crop).resize((side, side), Image.Resampling.BILINEAR)
    grey = np.asarray(cell.convert("L"))
    cover = np.concatenate([np.asarray(cell), np.stack([grey] * 3, axis=-1)], axis=1)
    Image.fromarray(np.ascontiguousarray(cover)).save(path)


def _fix_spec_serializers() -> None:
    """Make bioimageio.spec 0.5.12 serialize (and so validate and package) under pydantic >= 2.14.

    Three of its wrap serializers hand pydantic's ``SerializationInfo`` to the wrap handler as its ``index_key``
    (``handler(value, info)``), which pydantic 2.14 refuses (pydantic PR 13506: "'index_key' is expected to be an
    integer or a string"); bioimageio.spec 0.5.14 calls ``handler(value)``, but bioimageio.core 0.11.0, the newest,
    pins bioimageio.spec 0.5.12.0. This recompiles those three functions with ``handler(value)`` in place (the
    function objects themselves, which pydantic's schemas hold), once; it does nothing where the call is not there.
    """
    import inspect
    import re
    import textwrap

    from bioimageio.spec._internal import io_packaging, validated_string_with_inner_node
    from bioimageio.spec.model import v0_4

    proxy = validated_string_with_inner_node.ValidatedStringWithInnerNode.__dict__.get("_serialize")
    funcs = [io_packaging.package_file_descr_serializer, v0_4.package_weights, getattr(proxy, "wrapped", None)]
    bad = re.compile(r"handler\(\s*(value|self),\s*info,[^\n]*\n\s*\)")
    for func in funcs:
        if func is None or getattr(func, "_napari_leukemia_fixed", False):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(func))
        except (OSError, TypeError):
            continue
        if not bad.search(src):
            continue
        src = "\n".join(line for line in bad.sub(r"handler(\1)", src).splitlines() if not line.startswith("@"))
        namespace: dict = {}
        exec(compile(src, inspect.getsourcefile(func) or "<bioimageio.spec>", "exec"), func.__globals__, namespace)  # noqa: S102
        func.__code__ = namespace[func.__name__].__code__
        func._napari_leukemia_fixed = True
