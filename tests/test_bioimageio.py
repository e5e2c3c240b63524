"""bioimage.io export: the shipped classifier as a model package that passes bioimageio.core's test, offline."""

from __future__ import annotations

import copy
import dataclasses
import io
import zipfile

import numpy as np
import pytest
import torch

from napari_leukemia import cli
from napari_leukemia.core.predict import probabilities

pytest.importorskip("bioimageio.core")

#: The package's probabilities against torch's, both fp32 on the same crops (as tests/test_onnx.py).
P_TOLERANCE = 1e-4


@pytest.fixture
def no_network(monkeypatch):
    """Any HTTP request bioimageio makes (URL checks, downloads) fails the test."""
    import httpx

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(httpx, "request", refuse)
    monkeypatch.setattr(httpx, "stream", refuse)


@pytest.fixture(scope="module")
def package(tmp_path_factory, classifier_path):
    """The shipped classifier exported by the CLI (about 80 s on one core: cellpose on the sample, ONNX)."""
    out = tmp_path_factory.mktemp("bioimageio") / "leukemic.zip"
    code = cli.main(["export", str(classifier_path), "--format", "bioimageio", "--out", str(out)])
    assert code == 0
    return out


def _npy(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.load(io.BytesIO(zf.read(name)))


def test_package_passes_bioimageio_core_test_offline(package, no_network):
    from bioimageio.core import test_model

    summary = test_model(package)
    assert summary.status == "passed", summary.format()
    names = [d.name for d in summary.details]
    assert any("Reproduce test outputs" in n for n in names)


def test_package_output_is_torch_probabilities_on_the_sample(package, classifier):
    with zipfile.ZipFile(package) as zf:
        files = set(zf.namelist())
        assert {"rdf.yaml", "classifier.onnx", "test_input.npy", "test_output.npy", "README.md", "cover.png"} <= files
        x, y = _npy(zf, "test_input.npy"), _npy(zf, "test_output.npy")
        rdf, readme = zf.read("rdf.yaml").decode(), zf.read("README.md").decode()
    size = classifier.info.crop.size
    assert x.dtype == np.float32 and x.shape[1:] == (3, size, size) and len(x) >= 1
    assert y.shape == (len(x), len(classifier.info.classes)) and y.dtype == np.float32
    with torch.inference_mode():
        logits = copy.deepcopy(classifier.net).float().eval()(torch.from_numpy(x)).numpy()
    network = dataclasses.replace(classifier, feature_svm=None)  # the package holds the network alone
    assert np.abs(probabilities(network, logits) - y).max() <= P_TOLERANCE
    assert y[0, list(classifier.info.classes).index("leukemic")] > 0.5  # the sample's centre cell: a signed blast
    for text in ("format_version: 0.5", "BSD-3-Clause", "10.1109/CVPR.2017.243", "10.1038/s41698-021-00179-y",
                 "napari-leukemia", "normal", "leukemic", "crop_cells"):
        assert text in rdf, text
    assert "not a diagnostic device" in readme and "## Validation" in readme and "MIT licence" in readme
    cv = classifier.info.provenance.get("cross_validation")
    if cv:  # the shipped classifier's figures are its cross-validation's, of its pool with a feature SVM
        assert f"{cv['k']}-fold cross-validation over {cv['n_patients']} patients" in readme
        assert (classifier.feature_svm is not None) == ("this package does not hold" in readme)
    assert str(classifier.info.crop.mean[0]) in readme and str(classifier.info.crop.std[0]) in readme


def test_cli_refuses_to_replace_a_package(package, classifier_path, capsys):
    stamp = package.stat().st_mtime_ns
    code = cli.main(["export", str(classifier_path), "--format", "bioimageio", "--out", str(package)])
    assert code == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert package.stat().st_mtime_ns == stamp
    assert [p.name for p in package.parent.iterdir()] == ["leukemic.zip"]  # no temporary file left
