"""docs/tutorial.ipynb runs top to bottom in a real Jupyter kernel, and its plotting cells show pictures."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

import xpdl

#: The folder holding the xpdl package the tests import: the kernel must import the same one.
REPO = Path(xpdl.__file__).resolve().parents[1]
TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
PNG = b"\x89PNG\r\n\x1a\n"

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'xpdl[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install 'xpdl[test]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install 'xpdl[test]')")


def kernelspec_dir(root: Path) -> Path:
    """A ``python3`` kernelspec under ``root`` that runs this interpreter and imports this xpdl."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (xpdl tests)",
                "language": "python",
                "env": {"PYTHONPATH": path, "TMPDIR": str(root), "XPDL_QUIET": "1"},
            }
        )
    )
    return root


WHICH_XPDL = "import sys, xpdl\nprint(sys.executable)\nprint(xpdl.__file__)"


@pytest.fixture(scope="module")
def kernel_root(tmp_path_factory) -> Path:
    """The kernel's TMPDIR (and its kernelspec): a temporary folder the tutorial leaves behind shows here."""
    return tmp_path_factory.mktemp("kernel")


@pytest.fixture(scope="module")
def executed(kernel_root) -> nbformat.NotebookNode:
    root = kernel_root
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(kernelspec_dir(root))  # searched before the user's and the system's specs
    try:
        nb = nbformat.read(TUTORIAL, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(WHICH_XPDL))
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(root)}}
        )
        client.execute()
    finally:
        if old is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = old
    return nb


def test_tutorial_is_stored_without_outputs():
    nb = nbformat.read(TUTORIAL, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def stdout(cells) -> str:
    return "".join(o.text for c in cells for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def test_the_kernel_runs_this_interpreter_and_this_checkout_of_xpdl(executed):
    executable, module = stdout(executed.cells[-1:]).split()
    assert Path(executable) == Path(sys.executable)
    assert Path(module) == Path(xpdl.__file__).resolve()


def test_every_cell_of_the_tutorial_runs_in_a_kernel_without_an_error(executed):
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = stdout(code)
    assert text.count("relative error") == 3 and "the reloaded net predicts exactly as the trained one" in text
    bar = "".join(o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr")
    assert "training: 100%" in bar and "epoch 15/15" in bar


def test_every_plotting_cell_shows_a_picture(executed):
    plotting = [c for c in executed.cells if c.cell_type == "code" and c.source.splitlines()[-1].startswith("plots.")]
    assert len(plotting) == 5
    for cell in plotting:
        images = [o.data["image/png"] for o in cell.outputs if "data" in o and "image/png" in o.data]
        assert len(images) == 1, cell.source
        assert base64.b64decode(images[0])[:8] == PNG


def stderr_lines(cells) -> list[str]:
    """What the cells wrote to stderr, progress bars left out."""
    text = "".join(o.text for c in cells for o in c.outputs if o.output_type == "stream" and o.name == "stderr")
    return [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip() and "training:" not in ln]


def test_the_tutorial_prints_no_warning(executed):
    """No warning a reader cannot act on (e.g. tqdm's "IProgress not found" where ipywidgets is missing)."""
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert not [ln for ln in stderr_lines(code) if "Warning" in ln or "warn" in ln.lower()], stderr_lines(code)


def test_the_tutorial_leaves_no_temporary_folder(executed, kernel_root):
    assert sorted(p.name for p in kernel_root.iterdir()) == ["kernels"]
