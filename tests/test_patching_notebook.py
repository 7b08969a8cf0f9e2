"""analyses/patching_demo.ipynb runs top to bottom, offline, on SmolLM2 (its code cells in order)."""

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOK = Path(__file__).parent.parent / "analyses" / "patching_demo.ipynb"


@pytest.mark.smollm2
def test_demo_notebook_runs(smollm2):
    import matplotlib.pyplot as plt

    nb = json.loads(NOTEBOOK.read_text())
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            lines = "".join(cell["source"]).splitlines(keepends=True)
            source = "".join(line for line in lines if not line.startswith("%"))  # IPython magics
            exec(compile(source, f"{NOTEBOOK.name}", "exec"), scope)  # noqa: S102
    assert scope["resid"].scores.shape == (11, 30)
    assert scope["pair"].clean_score > scope["pair"].corrupted_score
    plt.close("all")


def test_committed_notebook_is_executed_with_one_image_per_figure_cell():
    """Executed offline and committed with its outputs; a cell that returns a figure shows it once."""
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code), "commit the notebook executed (nbconvert --execute)"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    figure_cells = [c for c in code if "plots.heatmap(" in "".join(c["source"])]
    assert len(figure_cells) == 2
    for cell in figure_cells:
        assert sum("image/png" in o.get("data", {}) for o in cell["outputs"]) == 1
