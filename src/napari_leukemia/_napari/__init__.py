"""The napari face of napari-leukemia: the only package that imports napari, qtpy or magicgui."""
