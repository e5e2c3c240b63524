import subprocess
import sys
from pathlib import Path

import napari_leukemia

CORE = Path(napari_leukemia.__file__).parent / "core"


def test_import_loads_neither_torch_nor_qt_nor_cellpose():
    code = (
        "import sys, napari_leukemia; napari_leukemia.__version__; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'cellpose', 'napari', 'PyQt6', 'PySide6', 'qtpy')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_has_no_gui_imports():
    offenders = []
    for path in CORE.rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if len(words) > 1 and words[0] in ("import", "from") and words[1].split(".")[0] in (
                "napari", "qtpy", "magicgui", "PyQt6", "PyQt5", "PySide6", "PySide2"
            ):
                offenders.append(f"{path.name}: {line.strip()}")
    assert not offenders


def test_public_api_resolves_lazily():
    assert callable(napari_leukemia.analyze_smear)
    assert callable(napari_leukemia.crop_cells)
    assert "analyze_smear" in dir(napari_leukemia)
    from napari_leukemia.core.results import save_result

    assert napari_leukemia.save_result is save_result  # the console saves what the CLI and the widget save


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(Path(napari_leukemia.__file__).parent / "napari.yaml")
    assert manifest.name == "napari-leukemia"
    assert all(c.id.startswith("napari-leukemia.") for c in manifest.contributions.commands)
    assert {s.key for s in manifest.contributions.sample_data} == {"bccd", "deepapl", "mosaic"}


def test_every_widget_worker_starts_in_one_place():
    """Workers (which load models) start only in WorkerWidget._start, behind the guard against torch importing
    triton next to Mesa's LLVM (a segfault)."""
    napari_dir = Path(napari_leukemia.__file__).parent / "_napari"
    starters = [path.name for path in napari_dir.rglob("*.py")
                if any(word in path.read_text() for word in ("create_worker", "thread_worker", "avoid_llvm_clash"))]
    assert starters == ["worker_widget.py"]
