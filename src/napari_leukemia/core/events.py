"""Progress events of core's long operations (cropping, training, evaluation, cross-validation).

An event is a plain dict with a ``"stage"`` key (``"crop"``, ``"data"``, ``"epoch"``, ``"calibrate"``, ``"fold"`` ...)
and, where the stage counts something, ``"done"`` and ``"total"``. Generators yield them and return their result;
:func:`~napari_leukemia.core.drain` runs one to its end.
"""

Event = dict
