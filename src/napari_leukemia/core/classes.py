"""Class policy: the class list of a run, which classes are leukaemic, and datasets that cannot train."""

from __future__ import annotations

import re
from collections import Counter

from .datasets import Sample

#: The class list of a leukaemic-vs-normal dataset (the shipped model's order).
BINARY_CLASSES = ("normal", "leukemic")
#: Parts of class names taken as leukaemic when the caller names no leukaemic classes (any case).
LEUKEMIC_WORDS = ("leukem", "leukaem", "blast", "promyelocyte", "promonocyte")
#: Whole class names taken as leukaemic (any case).
LEUKEMIC_NAMES = ("all", "aml", "apl", "cll", "cml")


def default_leukemic(classes) -> tuple[str, ...]:
    """The classes taken as leukaemic when none are named.

    A class is leukaemic when its name (any case) contains ``leukem``, ``leukaem``, ``blast``,
    ``promyelocyte`` or ``promonocyte``, or is one of ``ALL, AML, APL, CLL, CML``, and does not start with
    ``non`` / ``not_``. For DeepAPL's cell classes this gives exactly its leukaemic ones (blasts,
    promyelocytes, promonocytes).
    """
    def leukemic(name: str) -> bool:
        name = name.lower()
        if re.match(r"non|not[\W_]", name):
            return False
        return name in LEUKEMIC_NAMES or any(w in name for w in LEUKEMIC_WORDS)

    return tuple(c for c in classes if leukemic(c))


def class_order(labels) -> tuple[str, ...]:
    """``("normal", "leukemic")`` for a binary dataset with those labels, else the labels sorted."""
    labels = set(labels)
    return BINARY_CLASSES if labels == set(BINARY_CLASSES) else tuple(sorted(labels))


def resolve_classes(labels, *, leukemic=None, base=None, base_name: str = "") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The class list (logit order) and leukaemic classes of a training run.

    Parameters
    ----------
    labels : iterable of str
        The dataset's labels.
    leukemic : sequence of str, optional
        The leukaemic classes; default: those of ``base``, else :func:`default_leukemic`.
    base : ClassifierInfo, optional
        Of the checkpoint a run starts from (fine-tuning or resuming): its class list is kept and must be
        the dataset's.
    base_name : str
        Names ``base`` in messages.
    """
    found = set(labels)
    if base is not None:
        if set(base.classes) != found:
            raise ValueError(f"{base_name}: the checkpoint was trained for classes {list(base.classes)}, the dataset "
                             f"has {sorted(found)}; a run can only continue from a checkpoint of the same class list "
                             "(start from ImageNet or random weights instead)")
        classes = tuple(base.classes)
        leukemic = base.leukemic if leukemic is None else leukemic
    else:
        classes = class_order(found)
    leukemic = default_leukemic(classes) if leukemic is None else tuple(leukemic)
    unknown = [c for c in leukemic if c not in classes]
    if unknown:
        raise ValueError(f"leukaemic classes {unknown} are not classes of the dataset {list(classes)}")
    if not leukemic:
        raise ValueError(f"no class of {list(classes)} looks leukaemic; name the leukaemic classes "
                         "(--leukemic-classes)")
    if set(leukemic) == set(classes):
        raise ValueError(f"every class {list(classes)} is leukaemic; name the leukaemic classes (--leukemic-classes)")
    return classes, leukemic


def check_samples(samples: list[Sample], when: str = "") -> None:
    """Refuse a dataset that cannot train a classifier: one class, or a class with a single image."""
    counts = Counter(s.label for s in samples)
    if len(counts) < 2:
        raise ValueError(f"the dataset has {'no class' if not counts else f'one class ({next(iter(counts))})'}{when}; "
                         "a classifier needs at least two")
    for label, n in sorted(counts.items()):
        if n == 1:
            path = next(s.path for s in samples if s.label == label)
            raise ValueError(f"class {label!r} has a single image ({path}){when}; each class needs at least two "
                             "(one to train on, one to validate on)")
