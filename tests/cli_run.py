"""Running the command line inside a test: exit code, standard output and standard error."""

from __future__ import annotations

import contextlib
import io

from napari_leukemia import cli


def run(*args) -> tuple[int, str, str]:
    """``napari-leukemia ARGS...`` in this process; arguments are turned into strings."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()
