"""The widget for real: JupyterLab on loopback, a notebook that shows a run, headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests._server import free_port


def notebook(run_path) -> dict:
    show = f"import attnmap\nrun = attnmap.load({str(run_path)!r})\nattnmap.show(run, layer=1)"
    bare = "# a run left last in a cell displays itself\nrun"
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": cid,
                   "metadata": {}, "outputs": [], "source": src}
                  for cid, src in (("show-run", show), ("bare-run", bare))],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


@pytest.fixture
def lab(tmp_path, gpt2_run):
    gpt2_run.save(tmp_path / "run.safetensors")
    (tmp_path / "view.ipynb").write_text(json.dumps(notebook(tmp_path / "run.safetensors")))
    with jupyter_lab(tmp_path) as url:
        yield url


@contextlib.contextmanager
def jupyter_lab(root):
    """`jupyter lab` on loopback serving `root`, no token; yields its URL."""
    port = free_port()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / "rt"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / "ws"), JUPYTER_CONFIG_DIR=str(root))
    log = open(root / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
         f"--port={port}", "--ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > 45:
                    log.flush()
                    pytest.fail("jupyter lab did not start:\n" +
                                (root / "lab.log").read_text(errors="replace")[-2000:])
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _viewer(cell: int) -> str:
    """JS for the viewer element in the output of the notebook's `cell`-th code cell."""
    return (f"document.querySelectorAll('.jp-Notebook .jp-CodeCell')[{cell}]"
            "?.querySelector('.jp-OutputArea .attnmap')")


def _check_heatmap(page, cell: int, layer: int, n: int) -> None:
    page.wait_for_function(f"{_viewer(cell)}?.dataset.draws >= 1", timeout=60000)
    st = page.evaluate(f"{_viewer(cell)}.__attnmap.state")
    assert (st["layer"], st["head"], st["view"]) == (layer, 0, "heatmap")
    # The canvas holds a real heatmap: the causal first cell is dark blue, its masked
    # neighbour grey, and the cells differ from one another.
    cells = page.evaluate(
        f"(() => {{ const a = {_viewer(cell)}.__attnmap;"
        " return [a.pixel(0, 0), a.pixel(0, 1), a.pixel(5, 2), a.pixel(9, 7)]; })()")
    first, masked, *others = cells
    assert first[2] > first[0] + 40 and sum(first[:3]) < 3 * 120
    assert masked[0] == masked[1] == masked[2] != 255
    assert len({tuple(c) for c in cells}) >= 3
    header = page.evaluate(f"{_viewer(cell)}.__attnmap.header")
    assert header["stacks"][0]["shape"] == [2, 2, n, n]


def open_notebook(page, url: str) -> None:
    """Open the notebook at `url` with its first cell focused, once the kernel is idle: on a
    busy machine its start can take long, and a cell sent before that may never run."""
    page.set_default_timeout(60000)
    page.goto(url)
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    editor.wait_for(state="visible")
    page.wait_for_function(
        "(document.querySelector('.jp-StatusBar-Widget, #jp-main-statusbar')?.innerText || '')"
        ".includes('Idle')", timeout=90000)
    editor.click()


@pytest.mark.slow
def test_notebook_shows_the_heatmap(page, lab, gpt2_run):
    open_notebook(page, f"{lab}/lab/tree/view.ipynb")
    page.keyboard.press("Shift+Enter")  # attnmap.show(run, layer=1); moves to the next cell
    page.keyboard.press("Shift+Enter")  # the bare `run`
    n = len(gpt2_run.tokens)
    _check_heatmap(page, 0, 1, n)
    # the run's own display: the same viewer, at its default view
    _check_heatmap(page, 1, 0, n)
    assert page.evaluate(f"{_viewer(1)} !== {_viewer(0)}")
    assert not [e for e in page.errors if "attnmap" in e]
