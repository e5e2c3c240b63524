"""Batched classification of cell crops, on CUDA when present, else a fast CPU path."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from .device import autocast_for
from .model import Classifier
from .preprocess import to_tensor


def _device_of(net):
    return next(net.parameters()).device


def predict_logits(classifier: Classifier, crops: np.ndarray, *, batch_size: int = 32, fast: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Logits ``(N, C)`` for uint8 crops ``(N, S, S, 3)`` made by :func:`~.preprocess.crop_cells`.

    Parameters
    ----------
    classifier : Classifier or OnnxClassifier
        A torch classifier, or one run by ONNX Runtime (:mod:`~.onnx_backend`); both get the same preprocessing.
    batch_size : int
        Crops per forward pass, at least 1.
    fast : bool
        Torch only: channels_last memory and fp16 autocast on CUDA, bf16 on CPUs with native bf16; predictions match
        fp32 (see tests). ONNX Runtime always computes in fp32.
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch.

    Raises
    ------
    ValueError
        When ``batch_size`` is not a whole number of at least 1.
    """
    import torch

    from .onnx_backend import INPUT, OUTPUT, OnnxClassifier

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")

    cfg = classifier.info.crop
    if isinstance(classifier, OnnxClassifier):
        context = contextlib.nullcontext()

        def forward(batch):
            return classifier.net.run([OUTPUT], {INPUT: to_tensor(batch, cfg).numpy()})[0]
    else:
        net = classifier.net
        device = _device_of(net)
        net.eval()
        if fast:
            net.to(memory_format=torch.channels_last)
        context = contextlib.ExitStack()
        context.enter_context(torch.inference_mode())
        context.enter_context(autocast_for(device, fast))

        def forward(batch):
            x = to_tensor(batch, cfg).to(device)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            return net(x).float().cpu().numpy()

    out = np.empty((len(crops), len(classifier.info.classes)), np.float32)
    with context:
        for start in range(0, len(crops), batch_size):
            done = min(start + batch_size, len(crops))
            out[start:done] = forward(crops[start:done])
            if progress:
                progress(done, len(crops))
    return out


def probabilities(classifier: Classifier, logits: np.ndarray, p_features: np.ndarray | None = None) -> np.ndarray:
    """Calibrated class probabilities: softmax of logits over the checkpoint's temperature, pooled with its feature
    SVM's (:attr:`~.model.Classifier.feature_svm`) when it carries one.

    The pool is the normalised geometric mean of the two (the mean of their log-odds). The arithmetic mean it
    replaced left two calibrated opinions underconfident together and ranked worse in cross-validation
    (``docs/training_log.md``, session 20).

    Parameters
    ----------
    logits : (N, C) ndarray
        :func:`predict_logits` of the crops.
    p_features : (N,) ndarray, optional
        :func:`feature_opinion` of the same crops; required when the checkpoint carries a feature SVM.

    Raises
    ------
    ValueError
        When the checkpoint carries a feature SVM and ``p_features`` is missing or of another length.
    """
    z = logits / classifier.info.temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    proba = e / e.sum(axis=1, keepdims=True)
    if classifier.feature_svm is None:
        return proba
    if p_features is None or len(p_features) != len(proba):
        raise ValueError(f"{classifier.name} pools its network with a feature SVM: pass the feature SVM's "
                         f"probabilities of the same {len(proba)} crops (feature_opinion)")
    opinion = np.zeros_like(proba)
    opinion[:, classifier.leukemic_index()[0]] = p_features
    opinion[:, 1 - classifier.leukemic_index()[0]] = 1.0 - np.asarray(p_features)
    pooled = np.sqrt(np.clip(proba, _EPS, 1.0) * np.clip(opinion, _EPS, 1.0))
    return pooled / pooled.sum(axis=1, keepdims=True)


def classify_crops(classifier: Classifier, crops: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Calibrated class probabilities ``(N, C)`` of uint8 crops: :func:`predict_logits`, then :func:`probabilities`
    with the checkpoint's feature SVM when it carries one."""
    return probabilities(classifier, predict_logits(classifier, crops, batch_size=batch_size),
                         feature_opinion(classifier, crops))


def network_part(p_leukemic: np.ndarray, p_features: np.ndarray) -> np.ndarray:
    """The network's leukaemic probability inside a pool with the feature SVM's (:func:`probabilities`)."""
    return _sigmoid(2 * _logit(p_leukemic) - _logit(p_features))


#: Probabilities are clipped to [_EPS, 1 - _EPS] before they are pooled: a certain opinion cannot veto the other.
_EPS = 1e-6


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(z / 2))


def feature_opinion(classifier: Classifier, crops: np.ndarray) -> np.ndarray | None:
    """The leukaemic probability of the crops by the checkpoint's feature SVM, or None when it carries none."""
    svm = classifier.feature_svm
    return None if svm is None else svm.p_leukemic(crops)


def p_leukemic(classifier: Classifier, proba: np.ndarray) -> np.ndarray:
    """Probability that each cell is leukaemic: the sum over the checkpoint's leukaemic classes."""
    return proba[:, classifier.leukemic_index()].sum(axis=1)


def adapt_batchnorm(classifier: Classifier, crops: np.ndarray, *, prior: float = 0.0, batch_size: int = 64) -> Classifier:
    """A copy of the classifier whose batch-norm statistics are moved to those of ``crops`` (one slide's cells).

    Test-time adaptation to a slide's stain and scanner: every batch-norm layer's running mean and variance are
    re-estimated from the slide's own cells (weights unchanged). ``prior`` weighs the trained statistics as that
    many cells (0: the slide's alone), so that a slide of few cells moves less.
    """
    import copy

    import torch

    net = copy.deepcopy(classifier.net).float().to(memory_format=torch.contiguous_format)
    device = _device_of(net)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    trained = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    with torch.no_grad():  # inference mode would not let the running statistics change
        for start in range(0, len(crops), batch_size):
            net(to_tensor(crops[start : start + batch_size], classifier.info.crop).to(device))
    n = len(crops)
    for m, (mean, var) in zip(norms, trained):
        m.eval()
        w = n / (n + prior)
        m.running_mean.copy_(w * m.running_mean + (1 - w) * mean)
        m.running_var.copy_(w * m.running_var + (1 - w) * var)
    return Classifier(net=net, info=classifier.info, path=classifier.path)
