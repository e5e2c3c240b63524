"""ONNX export and the ONNX Runtime backend: metadata, equality with torch on real crops, refusals, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_leukemia import cli
from napari_leukemia.core.checkpoint import CheckpointError
from napari_leukemia.core.config import CropConfig
from napari_leukemia.core.model import ClassifierInfo, load_classifier, new_classifier, save_classifier
from napari_leukemia.core.onnx_backend import (
    ONNX_FORMAT,
    OnnxClassifier,
    as_onnx,
    export_onnx,
    load_onnx_classifier,
)
from napari_leukemia.core.predict import p_leukemic, predict_logits, probabilities

#: ONNX Runtime against torch, both fp32, on real crops (the two sum in other orders).
P_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory, classifier):
    """The shipped DenseNet201 classifier exported to ONNX (about 30 s on one core)."""
    path = tmp_path_factory.mktemp("onnx") / "leukemic.onnx"
    export_onnx(classifier, path)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small ResNet18 classifier of three classes at 32 px, saved in fp32 (fast to export)."""
    torch.manual_seed(0)
    info = ClassifierInfo(classes=("lymphocyte", "blast", "promyelocyte"), leukemic=("blast", "promyelocyte"),
                          crop=CropConfig(size=32), temperature=1.5, architecture="resnet18")
    path = tmp_path_factory.mktemp("small") / "small.safetensors"
    save_classifier(new_classifier(info), path, half=False)
    return load_classifier(path, "cpu")


@pytest.fixture(scope="module")
def real_crops(classifier, deepapl_image, bccd_image, mosaic_smear):
    """Every cell the stain segmenter finds on the bundled samples, at the classifier's crop settings, with flips."""
    from napari_leukemia.core.preprocess import crop_cells
    from napari_leukemia.core.stain import stain_segment

    crops = [crop_cells(im, stain_segment(im), classifier.info.crop).images
             for im in (deepapl_image, bccd_image, mosaic_smear[0])]
    crops = np.concatenate(crops)
    return np.ascontiguousarray(np.concatenate([crops, crops[:, ::-1], crops[:, :, ::-1]]))


def test_export_carries_the_checkpoint_metadata(shipped_onnx, classifier):
    import onnx

    model = onnx.load(str(shipped_onnx), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == ONNX_FORMAT and meta["architecture"] == "densenet201"
    decoded = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "architecture")}  # the rest is JSON
    assert set(decoded) >= {"classes", "leukemic", "temperature", "crop", "provenance", "input", "output"}
    assert json.loads(meta["classes"]) == list(classifier.info.classes)
    assert json.loads(meta["leukemic"]) == list(classifier.info.leukemic)
    assert json.loads(meta["temperature"]) == classifier.info.temperature
    assert json.loads(meta["crop"]) == classifier.info.crop.to_dict()
    size = classifier.info.crop.size
    assert json.loads(meta["input"])["shape"] == ["N", 3, size, size]
    assert [i.name for i in model.graph.input] == ["crops"] and [o.name for o in model.graph.output] == ["logits"]
    assert load_onnx_classifier(shipped_onnx).info == classifier.info


def test_onnx_runtime_predicts_like_torch_fp32_on_real_crops(shipped_onnx, classifier, real_crops):
    assert len(real_crops) >= 12
    ort_clf = load_onnx_classifier(shipped_onnx, threads=1)
    a = predict_logits(classifier, real_crops, fast=False)
    seen = []
    b = predict_logits(ort_clf, real_crops, batch_size=5, progress=lambda done, n: seen.append(done))
    assert seen[-1] == len(real_crops) and b.shape == a.shape and b.dtype == np.float32
    assert np.abs(a - b).max() <= LOGIT_TOLERANCE
    network = dataclasses.replace(classifier, feature_svm=None)  # the ONNX file holds the network alone
    pa, pb = (p_leukemic(c, probabilities(c, z)) for c, z in ((network, a), (ort_clf, b)))
    assert np.abs(pa - pb).max() <= P_TOLERANCE
    assert 0 < pa.min() < 0.5 < pa.max() < 1  # the crops hold both calls, so the test is not trivially equal


def test_as_onnx_converts_once_and_keeps_it_by_weights(small, tmp_path):
    from napari_leukemia.core.explain import gradcam

    converted = as_onnx(small, cache_dir=tmp_path)
    assert isinstance(converted, OnnxClassifier) and converted.path == small.path
    assert as_onnx(small, cache_dir=tmp_path) is converted and as_onnx(converted) is converted
    (cached,) = tmp_path.glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    again = as_onnx(load_classifier(small.path, "cpu"), cache_dir=tmp_path)  # same weights: the file is reused
    assert cached.stat().st_mtime_ns == stamp and again.info == small.info
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.abs(predict_logits(small, crops, fast=False) - predict_logits(converted, crops)).max() < 1e-4
    with pytest.raises(TypeError, match="ONNX Runtime"):
        gradcam(converted, crops, [0, 0, 0])


def test_export_refuses_to_replace_a_file(small, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="model.onnx exists"):
        export_onnx(small, out)
    assert out.read_bytes() == b"keep me"
    export_onnx(small, out, overwrite=True)
    assert load_onnx_classifier(out).info == small.info
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left


def test_load_refuses_missing_foreign_and_unlabelled_files(small, tmp_path):
    import onnx

    with pytest.raises(CheckpointError, match="nothing.onnx: no such"):
        load_onnx_classifier(tmp_path / "nothing.onnx")
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(CheckpointError, match="noise.onnx: not a readable ONNX"):
        load_onnx_classifier(tmp_path / "noise.onnx")
    with pytest.raises(CheckpointError, match="small.safetensors: not a readable ONNX"):
        load_onnx_classifier(small.path)
    good = export_onnx(small, tmp_path / "good.onnx")
    model = onnx.load(str(good))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="bare.onnx: not a napari-leukemia-classifier-onnx file"):
        load_onnx_classifier(tmp_path / "bare.onnx")
    model = onnx.load(str(good))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "classes": "[oops"})
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(CheckpointError, match="damaged.onnx: metadata field 'classes' is not valid JSON"):
        load_onnx_classifier(tmp_path / "damaged.onnx")
    model = onnx.load(str(good))
    crop = {**small.info.crop.to_dict(), "size": 48}
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "crop": json.dumps(crop)})
    onnx.save(model, str(tmp_path / "resized.onnx"))
    with pytest.raises(CheckpointError, match=r"resized.onnx: its input .* \(N, 3, 48, 48\)"):
        load_onnx_classifier(tmp_path / "resized.onnx")


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_export_writes_a_model_that_runs(small, tmp_path, capsys):
    out = tmp_path / "out" / "small.onnx"
    code, stdout, _ = run(capsys, "export", small.path, "--format", "onnx", "--out", out)
    assert code == 0 and f"wrote {out}" in stdout and "classes ['lymphocyte', 'blast', 'promyelocyte']" in stdout
    crops = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.abs(predict_logits(load_onnx_classifier(out), crops) - predict_logits(small, crops, fast=False)).max() < 1e-4

    code, _, err = run(capsys, "export", small.path, "--out", out)
    assert code == 2 and f"{out} exists; pass --overwrite" in err
    assert run(capsys, "export", small.path, "--out", out, "--overwrite")[0] == 0


@pytest.mark.parametrize("architecture", ["small_cnn", "cnn_transformer"])
def test_custom_architectures_export_and_run_like_torch(tmp_path, sample_cells, architecture):
    """The small CNN and the CNN-Transformer (positional embedding resized to the 4 x 4 map of 64 px crops)."""
    torch.manual_seed(6)
    info = ClassifierInfo(crop=CropConfig(size=64), architecture=architecture)
    save_classifier(new_classifier(info), tmp_path / "c.safetensors", half=False)
    clf = load_classifier(tmp_path / "c.safetensors", "cpu")
    ort_clf = load_onnx_classifier(export_onnx(clf, tmp_path / "c.onnx"), threads=1)
    assert ort_clf.info == clf.info
    cells = sample_cells[2].images
    crops = np.concatenate([cells, cells[:, ::-1], cells.transpose(0, 2, 1, 3),
                            np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)])
    a, b = predict_logits(clf, crops, fast=False), predict_logits(ort_clf, crops)
    assert a.shape == (len(crops), 2) and np.abs(a - b).max() < P_TOLERANCE and a.std(0).min() > 1e-3


def test_cli_export_refuses_bad_input(small, tmp_path, capsys):
    foreign = tmp_path / "notes.safetensors"
    foreign.write_text("not a model")
    code, _, err = run(capsys, "export", foreign, "--out", tmp_path / "x.onnx")
    assert code == 2 and "cannot load the classifier" in err and "notes.safetensors" in err
    code, _, err = run(capsys, "export", small.path, "--out", tmp_path)
    assert code == 2 and "is a folder" in err
    code, _, err = run(capsys, "export", small.path, "--format", "tflite", "--out", tmp_path / "x.onnx")
    assert code == 2 and "invalid choice" in err
    assert not (tmp_path / "x.onnx").exists()


def test_export_help_imports_neither_torch_nor_onnx():
    import subprocess
    import sys

    code = ("import sys; from napari_leukemia import cli; rc = cli.main(['export', '--help']); assert rc == 0, rc; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--overwrite" in proc.stdout and "ONNX" in proc.stdout
