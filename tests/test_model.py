import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_leukemia.core.checkpoint import CheckpointError
from napari_leukemia.core.config import CLASSIFIER_ARCHITECTURES, CropConfig
from napari_leukemia.core.explain import gradcam
from napari_leukemia.core.model import (
    ClassifierInfo,
    find_imagenet_weights,
    load_classifier,
    load_imagenet_features,
    new_classifier,
    save_classifier,
)
from napari_leukemia.core.predict import classify_crops, p_leukemic, predict_logits, probabilities


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    torch.manual_seed(0)
    info = ClassifierInfo(classes=("lymphocyte", "blast", "promyelocyte"), leukemic=("blast", "promyelocyte"),
                          crop=CropConfig(size=64), temperature=1.5, provenance={"note": "test"})
    clf = new_classifier(info)
    path = tmp_path_factory.mktemp("m") / "three.safetensors"
    save_classifier(clf, path, half=False)
    return clf, path


def test_checkpoint_round_trip_carries_classes_and_preprocessing(three_class, sample_cells):
    clf, path = three_class
    loaded = load_classifier(path, "cpu")
    assert loaded.info == clf.info
    crops = sample_cells[2].images
    clf.net.eval()
    a = predict_logits(clf, crops, fast=False)
    b = predict_logits(loaded, crops, fast=False)
    assert np.allclose(a, b, atol=1e-4)
    proba = probabilities(loaded, b)
    assert np.allclose(proba.sum(1), 1) and np.allclose(p_leukemic(loaded, proba), proba[:, 1] + proba[:, 2])


def test_fast_cpu_path_predicts_like_fp32(classifier, sample_cells):
    from napari_leukemia.core.preprocess import crop_cells

    image, labels, _ = sample_cells
    crops = crop_cells(image, labels, classifier.info.crop).images
    network = dataclasses.replace(classifier, feature_svm=None)  # the fast path is the network's
    slow = probabilities(network, predict_logits(classifier, crops, fast=False))
    fast = probabilities(network, predict_logits(classifier, crops, fast=True))
    assert np.array_equal(slow.argmax(1), fast.argmax(1))
    assert np.abs(slow - fast).max() < 0.05


def test_refuses_foreign_damaged_and_mismatched_checkpoints(tmp_path, three_class):
    from safetensors.torch import save_file

    _, path = three_class
    (tmp_path / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(CheckpointError, match="random.safetensors.*not a readable"):
        load_classifier(tmp_path / "random.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="other.safetensors.*not a napari-leukemia-classifier"):
        load_classifier(tmp_path / "other.safetensors")
    # weights of three classes under a two-class label list
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["classes"], meta["leukemic"] = '["a", "b"]', '["b"]'
    save_file(state, str(tmp_path / "mismatch.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="mismatch.safetensors.*do not fit.*'a', 'b'"):
        load_classifier(tmp_path / "mismatch.safetensors")
    meta["architecture"] = "alexnet"
    save_file(state, str(tmp_path / "arch.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="arch.safetensors: metadata field 'architecture' must be one of.*'alexnet'"):
        load_classifier(tmp_path / "arch.safetensors")
    meta["architecture"] = "resnet18"  # a known architecture, but not the one of these weights
    save_file(state, str(tmp_path / "arch.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="arch.safetensors: weights do not fit a resnet18"):
        load_classifier(tmp_path / "arch.safetensors")


@pytest.fixture(scope="module")
def three_class_contents(three_class):
    """Metadata and weights of the three-class checkpoint, to write broken copies of."""
    from safetensors import safe_open

    with safe_open(str(three_class[1]), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _crop_with(**changes) -> str:
    return json.dumps({**CropConfig(size=64).to_dict(), **changes})


# (field, its broken metadata string or None to leave it out, what the message says is wrong)
BROKEN_CLASSIFIER_METADATA = {
    "hidden negative": ("hidden", "-1", "at least 1, got -1"),
    "hidden not an integer": ("hidden", "512.5", "must be an integer"),
    "temperature not JSON": ("temperature", "abc", "not valid JSON"),
    "temperature zero": ("temperature", "0", "above 0, got 0"),
    "temperature negative": ("temperature", "-1.5", "above 0, got -1.5"),
    "temperature NaN": ("temperature", "NaN", "finite number, got nan"),
    "temperature missing": ("temperature", None, "is missing"),
    "dropout out of range": ("dropout", "1.5", r"within \[0, 1\)"),
    "classes a string": ("classes", '"lymphocyte,blast,promyelocyte"', "must be a list of names, got str"),
    "classes duplicated": ("classes", '["lymphocyte", "blast", "blast"]', r"names \['blast'\] more than once"),
    "classes empty name": ("classes", '["lymphocyte", "", "promyelocyte"]', "non-empty names"),
    "classes only one": ("classes", '["blast"]', "at least two classes"),
    "leukemic not among classes": ("leukemic", '["blast", "myeloblast"]', r"\['myeloblast'\], which are not among"),
    "leukemic none": ("leukemic", "[]", "some but not all"),
    "crop size zero": ("crop", _crop_with(size=0), r"\.size' must be at least 1, got 0"),
    "crop size too small": ("crop", _crop_with(size=8), "out of range: crop size must be at least 16"),
    "crop std zero": ("crop", _crop_with(std=[0.2, 0.0, 0.2]), r"\.std' must be above 0"),
    "crop mask not bool": ("crop", _crop_with(mask_outside="no"), r"\.mask_outside' must be true or false"),
    "crop unknown setting": ("crop", _crop_with(zoom=2), r"unknown settings \['zoom'\]"),
    "provenance not JSON": ("provenance", '{"note": "test"', "not valid JSON"),
    "provenance not an object": ("provenance", '["note"]', "must be a JSON object, got list"),
}


@pytest.mark.parametrize("case", list(BROKEN_CLASSIFIER_METADATA))
def test_each_broken_classifier_metadata_field_is_refused_by_name(tmp_path, three_class_contents, case):
    from safetensors.torch import save_file

    field, value, problem = BROKEN_CLASSIFIER_METADATA[case]
    meta, state = three_class_contents
    meta = {k: v for k, v in meta.items() if k != field}
    if value is not None:
        meta[field] = value
    save_file(state, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"broken\.safetensors: metadata field '{field}.*{problem}"):
        load_classifier(tmp_path / "broken.safetensors", "cpu")


@pytest.mark.parametrize("fault", ["integer", "nan", "inf"])
def test_classifier_weights_that_are_not_finite_floats_are_refused(tmp_path, three_class_contents, fault):
    """A classifier with NaN weights once gave every cell "normal" (empty p_leukemic) and exited 0."""
    from safetensors.torch import save_file

    meta, state = three_class_contents
    head = state["head.5.weight"]
    if fault == "integer":
        broken = (head * 100).to(torch.int32)
    else:
        broken = head.clone()
        broken[0, 0] = float(fault)
    save_file({**state, "head.5.weight": broken}, str(tmp_path / "broken.safetensors"), metadata=meta)
    problem = "torch.int32 values, not floating point" if fault == "integer" else "NaN or infinite values"
    with pytest.raises(CheckpointError, match=rf"broken\.safetensors: weight 'head\.5\.weight' holds {problem}"):
        load_classifier(tmp_path / "broken.safetensors", "cpu")


def test_imagenet_initialisation_from_a_local_torchvision_state_dict(tmp_path):
    from torchvision.models import densenet201

    torch.manual_seed(1)
    reference = densenet201(weights=None)
    state = reference.state_dict()
    # torchvision's published file uses the old 'norm.1' key style
    old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
    torch.save(old, tmp_path / "densenet201-c1103571.pth")
    clf = new_classifier(ClassifierInfo(), imagenet_weights=tmp_path / "densenet201-c1103571.pth")
    for key, value in clf.net.features.state_dict().items():
        assert torch.equal(value, state["features." + key]), key
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="wrong.pth"):
        load_imagenet_features(clf.net, tmp_path / "wrong.pth")


def test_resnet18_classifier_round_trip_tunes_its_last_block_and_explains(tmp_path, sample_cells):
    from torchvision.models import resnet18

    from napari_leukemia.core.train import frozen_modules

    torch.manual_seed(2)
    info = ClassifierInfo(crop=CropConfig(size=64), architecture="resnet18")
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, tmp_path / "resnet18-f37072fd.pth")
    clf = new_classifier(info, imagenet_weights=tmp_path / "resnet18-f37072fd.pth")
    for key, value in clf.net.features.state_dict().items():
        assert torch.equal(value, reference[key]), key
    save_classifier(clf, tmp_path / "r18.safetensors", half=False)
    loaded = load_classifier(tmp_path / "r18.safetensors", "cpu")
    assert loaded.info.architecture == "resnet18" and loaded.info == clf.info
    crops = sample_cells[2].images
    clf.net.eval()
    assert np.allclose(predict_logits(clf, crops, fast=False), predict_logits(loaded, crops, fast=False), atol=1e-4)
    frozen = frozen_modules(loaded.net, "last_block")
    assert loaded.net.features.layer4 not in frozen and loaded.net.features.layer3 in frozen
    maps = gradcam(loaded, crops[:2], [0, 1])
    assert maps.shape == crops[:2].shape[:3] and 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize("architecture", CLASSIFIER_ARCHITECTURES)
def test_every_architecture_is_a_normal_two_class_checkpoint(tmp_path, sample_cells, architecture):
    from napari_leukemia.core.train import frozen_modules

    torch.manual_seed(3)
    clf = new_classifier(ClassifierInfo(crop=CropConfig(size=64), architecture=architecture))
    x = torch.randn(2, 3, 64, 64)
    clf.net.eval()
    with torch.no_grad():
        logits = clf.net(x)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    save_classifier(clf, tmp_path / "c.safetensors", half=False)
    loaded = load_classifier(tmp_path / "c.safetensors", "cpu")
    assert loaded.info.architecture == architecture and loaded.info == clf.info
    with torch.no_grad():
        assert torch.allclose(loaded.net(x), logits, atol=1e-5)
    children = dict(loaded.net.features.named_children())
    assert set(loaded.net.last_block) <= set(children) and isinstance(loaded.net.cam_layer, torch.nn.Module)
    frozen = frozen_modules(loaded.net, "last_block")
    assert len(frozen) == len(children) - len(loaded.net.last_block)
    assert all(children[name] not in frozen for name in loaded.net.last_block)
    crop = sample_cells[2].images[:1]
    maps = gradcam(loaded, crop, [1])
    assert maps.shape == crop.shape[:3] and 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize("architecture", ["small_cnn", "cnn_transformer"])
def test_custom_architectures_explain_any_crop_size_and_have_no_imagenet_weights(tmp_path, sample_cells, architecture):
    torch.manual_seed(4)
    clf = new_classifier(ClassifierInfo(crop=CropConfig(size=64), architecture=architecture), imagenet_weights="auto")
    crops = sample_cells[2].images[:3]
    maps = gradcam(clf, crops, [0, 1, 1])
    assert maps.shape == crops.shape[:3] and 0 <= maps.min() and maps.max() <= 1
    clf.net.eval()
    with torch.no_grad():  # the transformer's positional embedding is resized to other maps
        assert clf.net(torch.randn(1, 3, 48, 80)).shape == (1, 2) and clf.net(torch.randn(1, 3, 320, 320)).shape == (1, 2)
    assert find_imagenet_weights(architecture) is None
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "any.pth")
    with pytest.raises(CheckpointError, match=f"{architecture} has no ImageNet weights"):
        load_imagenet_features(clf.net, tmp_path / "any.pth")


def test_vgg16_and_efficientnet_b0_start_from_torchvision_state_dicts(tmp_path):
    from torchvision.models import efficientnet_b0, vgg16

    torch.manual_seed(5)
    info = ClassifierInfo(crop=CropConfig(size=64), architecture="vgg16")
    vgg = new_classifier(info).net
    # torchvision's VGG16 file: `features.*` (as vgg16().features names them) and a classifier, left out here but for
    # its last layer (the whole is 120M weights); random values, so that loading shows
    assert list(vgg16(weights=None).features.state_dict()) == list(vgg.features.state_dict())
    vgg_state = {"features." + k: torch.randn_like(v) for k, v in vgg.features.state_dict().items()}
    references = {"vgg16": vgg_state | {"classifier.6.weight": torch.zeros(1000, 4096),
                                        "classifier.6.bias": torch.zeros(1000)},
                  "efficientnet_b0": efficientnet_b0(weights=None).state_dict()}
    for architecture, state in references.items():
        torch.save(state, tmp_path / f"{architecture}.pth")
        clf = new_classifier(dataclasses.replace(info, architecture=architecture),
                             imagenet_weights=tmp_path / f"{architecture}.pth")
        for key, value in clf.net.features.state_dict().items():
            assert torch.equal(value, state["features." + key]), (architecture, key)
    with pytest.raises(CheckpointError, match="not efficientnet_b0 ImageNet weights"):
        load_imagenet_features(clf.net, tmp_path / "vgg16.pth")


def test_batchnorm_adaptation_takes_the_slides_statistics_and_leaves_the_model_alone(three_class, sample_cells):
    from napari_leukemia.core.predict import adapt_batchnorm
    from napari_leukemia.core.preprocess import to_tensor

    clf, _ = three_class
    crops = sample_cells[2].images
    before = clf.net.features.norm0.running_mean.clone()
    adapted = adapt_batchnorm(clf, crops)
    with torch.no_grad():
        first = clf.net.features.conv0(to_tensor(crops, clf.info.crop))
    assert torch.allclose(adapted.net.features.norm0.running_mean, first.mean((0, 2, 3)), atol=1e-4)
    assert torch.equal(clf.net.features.norm0.running_mean, before) and not adapted.net.training
    kept = adapt_batchnorm(clf, crops, prior=1e9)
    assert torch.allclose(kept.net.features.norm0.running_mean, before, atol=1e-4)
    assert predict_logits(adapted, crops).shape == (len(crops), 3)


def test_classifier_info_validation():
    with pytest.raises(ValueError, match="two distinct"):
        ClassifierInfo(classes=("a",), leukemic=())
    with pytest.raises(ValueError, match="not among"):
        ClassifierInfo(classes=("a", "b"), leukemic=("c",))


def test_gradcam_on_densenet201_highlights_within_crops(classifier, sample_cells):
    from napari_leukemia.core.preprocess import crop_cells

    image, labels, _ = sample_cells
    crops = crop_cells(image, labels, classifier.info.crop).images
    targets = classify_crops(classifier, crops).argmax(1)
    maps = gradcam(classifier, crops, targets)
    assert maps.shape == crops.shape[:3] and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.std() > 0.01
    assert not classifier.net.training


def test_gradcam_never_switches_a_training_model_to_eval(three_class, sample_cells):
    clf, _ = three_class
    clf.net.train()
    try:
        gradcam(clf, sample_cells[2].images[:1], [0])
        assert clf.net.training
    finally:
        clf.net.eval()


def test_shipped_classifiers_load_by_name(classifier):
    from napari_leukemia.core.model import DEFAULT_CLASSIFIER, SHIPPED_CLASSIFIERS, load_classifier

    assert SHIPPED_CLASSIFIERS["leukemic"] == DEFAULT_CLASSIFIER and DEFAULT_CLASSIFIER.is_file()
    by_name = load_classifier("leukemic", "cpu")
    assert by_name.path == str(DEFAULT_CLASSIFIER) and by_name.info == classifier.info
    with pytest.raises(CheckpointError, match="no_such_model"):
        load_classifier("no_such_model", "cpu")
    types = load_classifier("cell_type", "cpu").info
    assert types.crop.window > 0 and set(types.leukemic) == {"blast", "promyelocyte_or_promonocyte"}
    assert len(types.classes) == 9


def test_flush_denormals():
    """Training and Grad-CAM flush denormal floats (several times faster on x86 CPUs), without numpy warnings."""
    import warnings

    import torch

    from napari_leukemia.core.device import flush_denormals

    torch.set_flush_denormal(False)  # other tests may have turned it on in this thread
    tiny = torch.tensor([1e-39])  # a denormal float32
    assert (tiny * 1.0).item() > 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flush_denormals(torch.device("cpu"))
            _ = np.finfo(np.float32).smallest_subnormal  # numpy does not warn once primed
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
