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
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}", "exec"), scope)  # noqa: S102
    assert scope["resid"].scores.shape == (11, 30)
    assert scope["pair"].clean_score > scope["pair"].corrupted_score
    plt.close("all")
