"""Training augmentation on batches of normalised-later crops (torch, runs on the training device)."""

from __future__ import annotations

import math

# Ruifrok & Johnston haematoxylin, eosin, DAB optical-density vectors (rows), as in skimage.color.rgb2hed.
_HED_FROM_RGB = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]


def augment_batch(x, *, stain_jitter: float = 0.05, stain_vector_jitter: float = 0.0, blur_p: float = 0.1,
                  lowres_p: float = 0.0, generator=None):
    """Randomly augment a float batch ``(N, 3, S, S)`` in [0, 1].

    Right-angle turns and flips; a small free rotation and zoom (0.9-1.1); brightness and contrast
    (+-10%); stain-aware jitter (:func:`hed_jitter`) that scales and shifts each haematoxylin / eosin / DAB
    optical density by ``stain_jitter`` and changes the stain colours by ``stain_vector_jitter``;
    Gaussian blur with probability ``blur_p``; with probability ``lowres_p`` an image is shrunk by a
    factor of 1.5-3 (one per batch) and enlarged back (:func:`low_resolution`), as a smear photographed at a lower
    magnification or resolution looks.
    """
    import torch
    import torch.nn.functional as F

    n, dev = x.shape[0], x.device
    g = generator

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=g)

    k = int(torch.randint(0, 4, (1,), generator=g, device=dev))
    x = torch.rot90(x, k, dims=(2, 3))
    flip = rand(n) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    # free rotation +-15 degrees and zoom 0.9-1.1, reflecting at the border
    angle = (rand(n) * 2 - 1) * math.radians(15)
    scale = 0.9 + 0.2 * rand(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if stain_jitter > 0 or stain_vector_jitter > 0:
        x = hed_jitter(x, stain_jitter, vector_sigma=stain_vector_jitter, generator=g)
    # brightness and contrast
    b = 1 + (rand(n, 1, 1, 1) * 2 - 1) * 0.1
    c = 1 + (rand(n, 1, 1, 1) * 2 - 1) * 0.1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean) * b
    if blur_p > 0:
        blur = rand(n) < blur_p
        if blur.any():
            kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev) / 16
            k2 = (kernel[:, None] * kernel[None]).expand(3, 1, 5, 5)
            blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k2, groups=3)
            x = torch.where(blur.view(n, 1, 1, 1), blurred, x)
    if lowres_p > 0:
        low = rand(n) < lowres_p
        if low.any():
            factor = 1.5 + 1.5 * float(rand(1))
            x = torch.where(low.view(n, 1, 1, 1), low_resolution(x, factor), x)
    return x.clamp_(0, 1)


def low_resolution(x, factor: float):
    """Shrink a float batch ``(N, 3, S, S)`` by ``factor`` (antialiased) and enlarge it back to ``S``: fine
    detail such as chromatin texture is lost, as in a field imaged at lower resolution."""
    import torch.nn.functional as F

    size = x.shape[-1]
    small = max(int(round(size / factor)), 4)
    x = F.interpolate(x, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def hed_jitter(x, sigma: float, *, vector_sigma: float = 0.0, generator=None):
    """Stain-aware colour jitter of a float batch ``(N, 3, H, W)`` in [0, 1], per image.

    The optical density ``-log(x)`` is split into haematoxylin, eosin and DAB amounts (Ruifrok & Johnston
    colour deconvolution); each amount is scaled by ``N(1, sigma)`` and shifted by ``N(0, sigma)``. The
    amounts are turned back into RGB through the same stain vectors or, with ``vector_sigma > 0``, through
    stain vectors that each get ``N(0, vector_sigma)`` noise (kept non-negative, renormalised): the same cell
    as another dye batch or scanner would colour it. ``sigma = vector_sigma = 0`` returns ``x`` (up to the
    clamp at 1e-3).
    """
    import torch

    dev, n = x.device, x.shape[0]
    m = torch.tensor(_HED_FROM_RGB, device=dev)
    m = m / m.norm(dim=1, keepdim=True)
    hed_from_rgb = torch.linalg.inv(m)
    od = -torch.log(x.clamp(min=1e-3))  # (N, 3, H, W)
    hed = torch.einsum("nchw,cd->ndhw", od, hed_from_rgb)
    alpha = 1 + sigma * torch.randn(n, 3, 1, 1, device=dev, generator=generator)
    beta = sigma * torch.randn(n, 3, 1, 1, device=dev, generator=generator)
    hed = hed * alpha + beta
    if vector_sigma > 0:
        mn = (m + vector_sigma * torch.randn(n, 3, 3, device=dev, generator=generator)).clamp(min=1e-3)
        mn = mn / mn.norm(dim=2, keepdim=True)  # (N, stain, RGB)
        od = torch.einsum("ndhw,ndc->nchw", hed, mn)
    else:
        od = torch.einsum("ndhw,dc->nchw", hed, m)
    return torch.exp(-od)
