"""Qt-free core of napari-leukemia: segmentation, preprocessing, classification, explanation.

Nothing under ``core`` imports napari, qtpy or magicgui.
"""
