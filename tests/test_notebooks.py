"""The paper-reproduction notebooks run top to bottom in their quick mode (synthetic data, tiny models) and show what
they should: tables, Plotly charts and image grids.

Each notebook is executed with nbclient in the ``python3`` kernel that ipykernel installs into the environment
(``sys.prefix/share/jupyter/kernels``), from the notebooks' folder, with the parameters injected in a cell after the
one tagged ``parameters`` (as papermill does).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
BENCHMARK = NOTEBOOKS.parent / "results" / "benchmark.csv"
CELL_TIMEOUT = 300  # seconds; a quick-mode cell normally takes well under 30
PLOTLY = "application/vnd.plotly.v1+json"
NAMES = ("01_train_and_evaluate", "02_iterations_and_thresholds", "03_benchmark_table")


@pytest.fixture(autouse=True)
def this_environments_kernel(monkeypatch):
    """Look up the ``python3`` kernelspec in this environment first (ipykernel installs it into
    sys.prefix/share/jupyter/kernels; its "python" command is run as sys.executable), ahead of a user-level one that
    could start another interpreter."""
    paths = [str(Path(sys.prefix) / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(p for p in paths if p))


def kernel_env(tmp_path: Path) -> dict[str, str]:
    """The test process's environment, without network calls, with temporary files under ``tmp_path`` (also when a
    kernel is killed before it removes its own), and one torch thread unless I3AD_TEST_THREADS says otherwise: the
    tiny quick-mode networks gain little from a second thread, and on a machine whose cores are busy with other work
    two threads ran 4-6 times slower than one."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("I3AD_DATA_ROOT", None)  # the quick mode never reads the real data
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS=os.environ.get("I3AD_TEST_THREADS", "1"),
    )
    return env


def run_notebook(name: str, tmp_path: Path, **parameters) -> dict[str, nbformat.NotebookNode]:
    """Execute notebooks/<name>.ipynb with ``parameters`` injected; returns its executed cells by cell id."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, id="injected-parameters")
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(tagged[0] + 1, injected)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    started = time.perf_counter()
    client.execute(env=kernel_env(tmp_path))  # raises CellExecutionError, with the traceback, if a cell fails
    print(f"{name}: {time.perf_counter() - started:.1f} s")
    for cell in notebook.cells:
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{name}, cell {cell.id}: {errors}"
    return {cell.id: cell for cell in notebook.cells}


def outputs(cell: nbformat.NotebookNode, mime: str) -> list:
    """The cell's outputs of one MIME type (Plotly figures parsed from JSON)."""
    found = [o.data[mime] for o in cell.get("outputs", []) if mime in o.get("data", {})]
    return [json.loads(f) if isinstance(f, str) and mime.endswith("json") else f for f in found]


def text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def figure(cell: nbformat.NotebookNode) -> dict:
    figures = outputs(cell, PLOTLY)
    assert len(figures) == 1, f"cell {cell.id}: expected one Plotly figure, got {len(figures)}"
    return figures[0]


def values(array) -> list:
    """A trace's data array as a list: Plotly >= 6 writes numeric arrays as base64 typed arrays."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def trace_names(fig: dict) -> set[str]:
    return {trace.get("name") for trace in fig["data"]}


def test_notebooks_are_committed_without_outputs():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} >= set(NAMES)
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3"
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.slow
def test_train_and_evaluate_quick(tmp_path):
    results_csv = tmp_path / "quick.csv"
    cells = run_notebook("01_train_and_evaluate", tmp_path, QUICK=True, RESULTS_OUT=str(results_csv))

    assert "synthetic: 40 normal training images" in text(cells["data"])
    assert "i3ad: 100 steps" in text(cells["train"]) and "ae: 100 steps" in text(cells["train"])

    loss = figure(cells["loss-curve"])
    assert trace_names(loss) == {"i3ad", "ae"}
    assert all(len(values(trace["y"])) >= 10 for trace in loss["data"])

    # The evaluation table: one I3AD row at its default T and calibrated tau, one AE row.
    table = "".join(outputs(cells["evaluation"], "text/html"))
    assert "image_auroc" in table and "aupro" in table

    results = pd.read_csv(results_csv)
    assert set(results["model"]) == {"i3ad", "ae"} and set(results["category"]) == {"synthetic"}
    # T = 0..5, each with raw maps and with the normal error subtracted.
    i3ad = results[results["model"] == "i3ad"]
    assert sorted(i3ad["iterations"]) == sorted(list(range(6)) * 2)
    assert sorted(results["normal_error_subtracted"].unique()) == [False, True]
    assert results[["image_auroc", "pixel_auroc", "aupro"]].notna().all().all()
    assert results["image_auroc"].between(0, 1).all()
    # Even 100 steps of a tiny network find painted spots and scratches on a regular texture.
    assert results.loc[results["model"] == "i3ad", "image_auroc"].max() > 0.6

    assert "mean" in trace_names(figure(cells["auroc-vs-iterations"]))
    # Detection examples: good, spot, scratch rows of input, ground truth, AE and I3AD heat-maps.
    grid = figure(cells["detection-example"])
    assert [t["type"] for t in grid["data"]] == ["image"] * 12
    assert all(t["source"].startswith("data:image/png;base64,") for t in grid["data"])


@pytest.mark.slow
def test_iterations_and_thresholds_quick(tmp_path):
    cells = run_notebook("02_iterations_and_thresholds", tmp_path, QUICK=True)

    assert "trained the synthetic i3ad model" in text(cells["sweep"])
    assert "T = 0..5" in text(cells["sweep"])
    assert "tau" in "".join(outputs(cells["sweep-means"], "text/html"))

    by_iterations = figure(cells["auroc-vs-iterations"])
    assert {"0.30", "0.50", "0.70", "0.90", "calibrated"} <= trace_names(by_iterations)
    assert all(values(trace["x"]) == list(range(6)) for trace in by_iterations["data"])  # T = 0..5
    by_threshold = figure(cells["auroc-vs-threshold"])
    assert {"T = 1", "T = 2", "T = 5"} <= trace_names(by_threshold)
    assert all(values(trace["x"]) == [0.3, 0.5, 0.7, 0.9] for trace in by_threshold["data"])
    assert figure(cells["mask-share"])["data"]
    assert "mean" in trace_names(figure(cells["per-category"]))

    # Figure 1: the AE row (input, ground truth, reconstruction, residual, map) and 4 I3AD rows for t = 0..5.
    grid = figure(cells["figure-1"])
    assert len(grid["data"]) == 5 + 4 * 6
    assert all(t["type"] == "image" for t in grid["data"])
    assert "synthetic_texture" in text(cells["figure-models"])
    assert "image score" in "".join(outputs(cells["figure-1-scores"], "text/html"))


@pytest.mark.slow
@pytest.mark.skipif(not BENCHMARK.is_file(), reason="results/benchmark.csv is not in this checkout")
def test_benchmark_table_quick_reads_the_committed_results(tmp_path):
    cells = run_notebook("03_benchmark_table", tmp_path, QUICK=True)
    committed = pd.read_csv(BENCHMARK)
    categories = set(committed["category"])
    with_masks = set(committed.dropna(subset=["pixel_auroc"])["category"])
    assert f"benchmark.csv: {len(committed)} rows" in text(cells["results"])
    html = "".join(outputs(cells["tables"], "text/html"))
    for column in ("i3ad image AUROC", "ae image AUROC", "T=0", "calibrated", "ssim+gms", *categories):
        assert column in html
    assert "mean image AUROC: i3ad" in text(cells["headline"])

    image_bars = figure(cells["image-auroc-bars"])
    assert {"i3ad", "ae"} <= trace_names(image_bars)
    assert {c for t in image_bars["data"] for c in values(t["x"])} == categories
    pixel_bars = figure(cells["pixel-auroc-bars"])
    assert {c for t in pixel_bars["data"] for c in values(t["x"])} == with_masks
    assert trace_names(figure(cells["auroc-vs-iterations"])) == categories | {"mean"}


@pytest.mark.slow
def test_benchmark_table_quick_without_a_results_file(tmp_path):
    """No results file: the quick mode trains tiny models on a synthetic category and charts their evaluation."""
    cells = run_notebook("03_benchmark_table", tmp_path, QUICK=True, RESULTS=str(tmp_path / "missing.csv"), STEPS=20)
    assert "computing a small results table" in text(cells["results"])
    assert not (tmp_path / "missing.csv").exists()
    html = "".join(outputs(cells["tables"], "text/html"))
    assert "synthetic" in html and "i3ad image AUROC" in html
    assert {"i3ad", "ae"} <= trace_names(figure(cells["image-auroc-bars"]))
    assert {"i3ad", "ae"} <= trace_names(figure(cells["pixel-auroc-bars"]))
    assert trace_names(figure(cells["auroc-vs-iterations"])) == {"synthetic", "mean"}
