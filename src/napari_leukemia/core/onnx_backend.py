"""ONNX: a classifier exported to a self-describing ``.onnx`` file, and run with ONNX Runtime on a CPU.

The ONNX model takes the normalised crops of :func:`~.preprocess.to_tensor`, ``crops`` ``(N, 3, S, S)`` float32
(any N), and returns the ``logits`` ``(N, C)``. Its ``metadata_props`` are the checkpoint's metadata
(:meth:`~.model.ClassifierInfo.to_metadata`: ``classes``, ``leukemic``, ``temperature``, ``crop`` (CropConfig),
``hidden``, ``dropout``, ``provenance`` as JSON strings; ``architecture`` a plain name), under the format tag
:data:`ONNX_FORMAT`, plus ``input``, ``output`` (how to feed it and read it) and ``weights_sha256``, also JSON, so
that the file runs without napari-leukemia. :func:`~.predict.predict_logits` accepts an :class:`OnnxClassifier`
wherever it accepts a torch :class:`~.model.Classifier`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import warnings
import weakref
from pathlib import Path

from .checkpoint import CheckpointError
from .model import Classifier, ClassifierInfo

ONNX_FORMAT = "napari-leukemia-classifier-onnx"
INPUT, OUTPUT = "crops", "logits"
OPSET = 17
#: Where :func:`as_onnx` keeps the models it converts, one file per weights' SHA-256.
CACHE_DIR = Path.home() / ".cache" / "napari-leukemia" / "onnx"
_CONVERTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # torch network -> its OnnxClassifier


@dataclasses.dataclass
class OnnxClassifier(Classifier):
    """A classifier run by ONNX Runtime: ``net`` is an ``onnxruntime.InferenceSession``; ``info`` and ``path`` as
    for :class:`~.model.Classifier`. It predicts (:func:`~.predict.predict_logits`), but has no gradients for
    Grad-CAM."""


def weights_sha256(classifier: Classifier) -> str:
    """SHA-256 of a classifier's weights (as float32) and metadata: what an ONNX conversion of it depends on.

    Keyed by content, not by the checkpoint file, so that a network changed in memory (e.g. by
    :func:`~.predict.adapt_batchnorm`, which keeps the file's path) gets a conversion of its own.
    """
    h = hashlib.sha256(json.dumps(classifier.info.to_metadata(), sort_keys=True).encode())
    for name, value in classifier.net.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(classifier: Classifier, path, *, overwrite: bool = False) -> Path:
    """Write ``classifier`` as an ONNX model (fp32, dynamic batch, opset :data:`OPSET`) with its metadata, atomically.

    Parameters
    ----------
    classifier : Classifier
        A loaded torch classifier (:func:`~.model.load_classifier`).
    path : path
        The ``.onnx`` file to write.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is off.
    """
    import onnx

    from .io import atomic_path

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite (--overwrite) to replace it")
    model = onnx_model(classifier)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def onnx_model(classifier: Classifier):
    """``classifier`` as an in-memory ``onnx.ModelProto``: what :func:`export_onnx` writes."""
    import copy

    import onnx
    import torch

    net = copy.deepcopy(classifier.net).float().cpu().eval().to(memory_format=torch.contiguous_format)
    size = classifier.info.crop.size
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        # the CNN-Transformer: torch's attention checks its shapes in Python, constants for the traced crop size
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn.functional")
        torch.onnx.export(net, (torch.zeros(2, 3, size, size),), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    model = onnx.load_from_string(buf.getvalue())
    meta = {**classifier.info.to_metadata(), "format": ONNX_FORMAT, "weights_sha256": json.dumps(weights_sha256(classifier)),
            "input": json.dumps({"name": INPUT, "shape": ["N", 3, size, size], "dtype": "float32",
                                 "preprocessing": "RGB crop (crop settings in 'crop') scaled to [0, 1], minus "
                                                  "crop.mean, divided by crop.std, per channel"}),
            "output": json.dumps({"name": OUTPUT, "shape": ["N", len(classifier.info.classes)],
                                  "probabilities": "softmax(logits / temperature) over 'classes'; p_leukemic: the "
                                                   "sum over the 'leukemic' classes"})}
    onnx.helper.set_model_props(model, meta)
    return model


def load_onnx_classifier(path, *, threads: int = 0) -> OnnxClassifier:
    """Load an ``.onnx`` file written by :func:`export_onnx` into an ONNX Runtime CPU session.

    Parameters
    ----------
    path : path
    threads : int
        ONNX Runtime's intra-op threads (0: its default, one per physical core).

    Raises
    ------
    CheckpointError
        Missing, not ONNX, not written by napari-leukemia, with metadata out of
        :func:`~.checkpoint.classifier_metadata`'s schema, or whose input does not fit its crop size.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for foreign files
        raise CheckpointError(f"{path}: not a readable ONNX model ({str(err).strip()[:200]})") from err
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("format") != ONNX_FORMAT:
        raise CheckpointError(f"{path}: not a {ONNX_FORMAT} file (format tag {meta.get('format')!r}); "
                              "was it exported by napari-leukemia?")
    info = ClassifierInfo.from_metadata(meta, path)
    inputs = session.get_inputs()
    size = info.crop.size
    if [i.name for i in inputs] != [INPUT] or list(inputs[0].shape[1:]) != [3, size, size]:
        raise CheckpointError(f"{path}: its input {[(i.name, i.shape) for i in inputs]} is not {INPUT!r} of shape "
                              f"(N, 3, {size}, {size}) as its crop size says")
    return OnnxClassifier(net=session, info=info, path=str(path))


def as_onnx(classifier: Classifier, *, cache_dir=None) -> OnnxClassifier:
    """``classifier`` run by ONNX Runtime: converted once, kept in ``cache_dir`` under its weights' SHA-256.

    An :class:`OnnxClassifier` is returned as it is. The conversion of each torch network is also kept in memory
    for as long as the network lives; a network changed in place after its conversion is not converted again.

    Parameters
    ----------
    cache_dir : path, optional
        Default :data:`CACHE_DIR` (``~/.cache/napari-leukemia/onnx``).
    """
    if isinstance(classifier, OnnxClassifier):
        return classifier
    found = _CONVERTED.get(classifier.net)
    if found is None:
        found = load_onnx_classifier(cached_onnx_path(classifier, cache_dir))
        found = _CONVERTED[classifier.net] = dataclasses.replace(found, path=classifier.path)
    if found.feature_svm is not classifier.feature_svm:  # ONNX Runtime runs the network, numpy its feature SVM
        found = dataclasses.replace(found, feature_svm=classifier.feature_svm)
    return found


def cached_onnx_path(classifier: Classifier, cache_dir=None) -> Path:
    """The ONNX file of ``classifier`` in ``cache_dir`` (default :data:`CACHE_DIR`), exported first when missing."""
    path = Path(cache_dir or CACHE_DIR) / f"{weights_sha256(classifier)[:16]}-opset{OPSET}.onnx"
    if not path.is_file():
        export_onnx(classifier, path, overwrite=True)
    return path
