"""Stain-aware augmentation (core.augment) and its training settings."""

import pytest

torch = pytest.importorskip("torch")

from napari_leukemia.core.augment import augment_batch, hed_jitter  # noqa: E402
from napari_leukemia.core.config import TrainConfig  # noqa: E402


def _stained(n=8, size=16, seed=0):
    """A batch of pinkish-purple 'cells' on a near-white background, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, size, size), 0.95)
    x[:, :, 4:12, 4:12] = torch.tensor([0.45, 0.25, 0.6]).view(1, 3, 1, 1)
    return (x + 0.02 * torch.rand(x.shape, generator=g)).clamp(0, 1)


def test_hed_jitter_without_jitter_is_identity():
    x = _stained()
    assert torch.allclose(hed_jitter(x, 0.0), x, atol=1e-4)
    assert torch.allclose(hed_jitter(x, 0.0, vector_sigma=0.0), x, atol=1e-4)


def test_stain_vector_jitter_changes_stain_colours_not_white():
    x = _stained()
    x[:, :, 0, 0] = 1.0  # pure white (no stain) stays white under any stain vectors
    y = hed_jitter(x, 0.0, vector_sigma=0.2, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.allclose(y[:, :, 0, 0], torch.ones(8, 3), atol=1e-3)
    cell = y[:, :, 8, 8]
    assert (cell - x[:, :, 8, 8]).abs().max() > 0.02  # the stained pixels change colour
    assert cell.std(dim=0).max() > 0.005  # differently per image
    again = hed_jitter(x, 0.0, vector_sigma=0.2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, again)  # seeded


def test_stronger_stain_jitter_moves_colours_further():
    x = _stained(n=64)

    def change(sigma, vector_sigma=0.0):
        y = hed_jitter(x, sigma, vector_sigma=vector_sigma, generator=torch.Generator().manual_seed(2))
        return float((y - x).abs().mean())

    assert change(0.05) < change(0.2)
    assert change(0.2) < change(0.2, vector_sigma=0.2)


def test_augment_batch_with_strong_stain_augmentation():
    x = _stained()
    y = augment_batch(x, stain_jitter=0.2, stain_vector_jitter=0.1, generator=torch.Generator().manual_seed(3))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert 0 <= float(y.min()) and float(y.max()) <= 1


def test_train_config_stain_settings():
    cfg = TrainConfig(stain_jitter=0.2, stain_vector_jitter=0.1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().stain_vector_jitter == 0.0  # off unless asked for
    with pytest.raises(ValueError, match="negative"):
        TrainConfig(stain_vector_jitter=-0.1)
    with pytest.raises(ValueError, match="negative"):
        TrainConfig(stain_jitter=-0.1)


def test_cli_stain_options():
    from napari_leukemia.cli import build_parser

    args = build_parser().parse_args(["train", "data", "--out", "o", "--stain-jitter", "0.2",
                                      "--stain-vector-jitter", "0.1", "--lowres-p", "0.3"])
    assert (args.stain_jitter, args.stain_vector_jitter, args.lowres_p) == (0.2, 0.1, 0.3)
    defaults = build_parser().parse_args(["train", "data", "--out", "o"])
    assert (defaults.stain_jitter, defaults.stain_vector_jitter) == (TrainConfig().stain_jitter, 0.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--out", "o", "--stain-jitter", "-1"])


def test_low_resolution_removes_fine_detail_only():
    from napari_leukemia.core.augment import low_resolution

    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = low_resolution(x, 2.0)
    assert y.shape == x.shape
    assert float(y.std()) < float(x.std()) * 0.8  # pixel noise (fine texture) is smoothed away
    flat = torch.full((1, 3, 32, 32), 0.7)
    assert torch.allclose(low_resolution(flat, 3.0), flat, atol=1e-5)  # flat colour is kept
    z = augment_batch(x, stain_jitter=0.0, blur_p=0.0, lowres_p=1.0, generator=torch.Generator().manual_seed(5))
    assert z.shape == x.shape and 0 <= float(z.min()) and float(z.max()) <= 1
    with pytest.raises(ValueError, match="probabilities"):
        TrainConfig(lowres_p=1.5)
