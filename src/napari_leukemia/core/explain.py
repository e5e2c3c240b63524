"""Grad-CAM heat maps of the classifier's ``cam_layer`` (DenseNet201: its last feature block)."""

from __future__ import annotations

import copy

import numpy as np

from .device import flush_denormals
from .model import Classifier
from .preprocess import to_tensor


def gradcam(classifier: Classifier, crops: np.ndarray, targets, *, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM of each crop for its target class.

    Parameters
    ----------
    crops : (N, S, S, 3) ndarray of uint8
    targets : (N,) sequence of int
        Class index explained for each crop (usually the predicted class).

    Returns
    -------
    (N, S, S) ndarray of float32 in [0, 1]
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = classifier.net
    if not hasattr(net, "parameters"):
        raise TypeError(f"Grad-CAM needs the torch network, and {classifier.name} is run by ONNX Runtime")
    if net.training:  # GradCAM puts what it is given in eval mode: never hand it a model being trained
        net = copy.deepcopy(net)
    net.float().to(memory_format=torch.contiguous_format)
    device = next(net.parameters()).device
    out = np.zeros((len(crops), crops.shape[1], crops.shape[2]), np.float32)
    flush_denormals(device)
    with GradCAM(model=net, target_layers=[net.cam_layer]) as cam:
        for start in range(0, len(crops), batch_size):
            x = to_tensor(crops[start : start + batch_size], classifier.info.crop).to(device)
            t = [ClassifierOutputTarget(int(k)) for k in targets[start : start + len(x)]]
            out[start : start + len(x)] = cam(input_tensor=x, targets=t)
    return out
