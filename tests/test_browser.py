"""The HTML views as a person sees them: headless Chromium opens the trace report, a dataset
report and the demo notebook exported to HTML, with no network; each page must render
without a JavaScript console message, show its heatmaps with the expected number of cells,
and give a screenshot that is not blank.

Needs Debian's ``chromium`` (``.ci/run`` installs it where it is missing). Without it the
test fails with that instruction; it is never skipped.
"""

import json
import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).parent.parent / "analyses" / "patching_demo.ipynb"
PROMPT, SUBJECT = "The Eiffel Tower is in", "The Eiffel Tower"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no chromium on PATH: install Debian's chromium (apt-get install -y chromium; "
                    ".ci/run does it where it is missing)")
    return found


def _run_chromium(page: Path, profile: Path, *args: str) -> tuple[str, list[str]]:
    """One headless Chromium run on ``page`` (its own process group, ended by its pid if it hangs);
    stdout and the page's console messages (from Chromium's log)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
           "--window-size=1280,1600", "--virtual-time-budget=3000", *args, page.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, by its leader's pid
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    return out, [line for line in err.splitlines() if ":CONSOLE" in line]


class _Count(HTMLParser):
    """Heatmaps (``svg.mechedit-heatmap``) and their cells (``rect.cell``) in a rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.heatmaps: list[tuple[int, int]] = []  # (rows, layers) each says it has
        self.cells = 0
        self.images = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "svg" and "mechedit-heatmap" in classes:
            self.heatmaps.append((int(a["data-rows"]), int(a["data-layers"])))
        elif tag == "rect" and "cell" in classes:
            self.cells += 1
        elif tag == "img":
            self.images += 1


def _open(page: Path, tmp_path: Path) -> tuple[_Count, np.ndarray]:
    """Render ``page``: its DOM after scripts ran, and a screenshot as an RGB array."""
    from PIL import Image

    shot = page.with_suffix(".png")
    dom, console = _run_chromium(page, tmp_path / "profile", "--dump-dom", f"--screenshot={shot}")
    assert not console, f"console messages on {page.name}: {console}"
    count = _Count()
    count.feed(dom)
    return count, np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)


def _not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 10, "the screenshot is (nearly) one colour"
    assert (pixels.min(-1) < 200).mean() > 0.01, "less than 1% of the screenshot is drawn"


def test_trace_and_dataset_reports_render(tiny_dirs, tmp_path, capsys):
    from mechedit.cli.main import main
    from mechedit.patching import PatchResult, html

    report = tmp_path / "trace.html"
    assert main(["trace", "--model", str(tiny_dirs["gpt2"]), "--prompt", PROMPT, "--subject", SUBJECT,
                 "--samples", "2", "--kind", "mlp", "--window", "3", "--out", str(tmp_path / "r"),
                 "--html", str(report)]) == 0
    results = [PatchResult.load(tmp_path / "r" / "mlp.json")]
    count, pixels = _open(report, tmp_path)
    assert count.heatmaps == [tuple(r.scores.shape) for r in results]
    assert count.cells == sum(r.scores.numel() for r in results)
    _not_blank(pixels)
    dataset = tmp_path / "dataset.html"
    dataset.write_text(html.dataset_page(results[:1] * 2, settings_={"note": "two copies of one trace"}))
    count, pixels = _open(dataset, tmp_path)
    assert count.heatmaps == [(6, results[0].n_layers)] + [tuple(results[0].scores.shape)] * 2  # mean, examples
    _not_blank(pixels)


def test_exported_notebook_renders(tmp_path):
    """The committed, executed demo notebook as nbconvert exports it (the HTML views in its outputs)."""
    nbconvert = pytest.importorskip("nbconvert", reason="the dev extra: pip install -e .[dev]")
    import nbformat

    nb = nbformat.reads(NOTEBOOK.read_text(), as_version=4)
    nb.metadata.pop("widgets", None)  # widget state would pull the widget manager from a CDN
    body, _ = nbconvert.HTMLExporter(template_name="lab").from_notebook_node(nb)
    page = tmp_path / "patching_demo.html"
    page.write_text(body)
    count, pixels = _open(page, tmp_path)
    views = [o for c in json.loads(NOTEBOOK.read_text())["cells"] for o in c.get("outputs", [])
             if 'class="mechedit-heatmap"' in "".join(o.get("data", {}).get("text/html", ""))]
    assert len(count.heatmaps) == len(views) >= 2  # resid and the pair
    assert count.cells == sum(r * c for r, c in count.heatmaps) and (11, 30) in count.heatmaps
    assert count.images >= 2  # the matplotlib figures
    _not_blank(pixels)
