"""The widget for real: JupyterLab on loopback, a notebook that shows a run, headless Chromium."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook(run_path) -> dict:
    src = f"import attnmap\nrun = attnmap.load({str(run_path)!r})\nattnmap.show(run, layer=1)"
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "show-run",
                   "metadata": {}, "outputs": [], "source": src}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


@pytest.fixture
def lab(tmp_path, gpt2_run):
    gpt2_run.save(tmp_path / "run.safetensors")
    (tmp_path / "view.ipynb").write_text(json.dumps(notebook(tmp_path / "run.safetensors")))
    port = free_port()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"), JUPYTER_CONFIG_DIR=str(tmp_path))
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
         f"--port={port}", "--ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
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
                                (tmp_path / "lab.log").read_text(errors="replace")[-2000:])
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


@pytest.mark.slow
def test_notebook_shows_the_heatmap(page, lab, gpt2_run):
    page.set_default_timeout(60000)
    page.goto(f"{lab}/lab/tree/view.ipynb")
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    editor.wait_for(state="visible")
    # Run the cell only once the kernel says it is idle: on a busy machine its start can
    # take long, and a cell sent before that may never run.
    page.wait_for_function(
        "(document.querySelector('.jp-StatusBar-Widget, #jp-main-statusbar')?.innerText || '')"
        ".includes('Idle')", timeout=90000)
    editor.click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_function("document.querySelector('.jp-OutputArea .attnmap')?.dataset.draws >= 1",
                           timeout=60000)
    st = page.evaluate("document.querySelector('.jp-OutputArea .attnmap').__attnmap.state")
    assert (st["layer"], st["head"], st["view"]) == (1, 0, "heatmap")
    # The canvas holds a real heatmap: the causal first cell is dark blue, its masked
    # neighbour grey, and the cells differ from one another.
    cells = page.evaluate(
        "(() => { const a = document.querySelector('.jp-OutputArea .attnmap').__attnmap;"
        " return [a.pixel(0, 0), a.pixel(0, 1), a.pixel(5, 2), a.pixel(9, 7)]; })()")
    first, masked, *others = cells
    assert first[2] > first[0] + 40 and sum(first[:3]) < 3 * 120
    assert masked[0] == masked[1] == masked[2] != 255
    assert len({tuple(c) for c in cells}) >= 3
    n = len(gpt2_run.tokens)
    header = page.evaluate("document.querySelector('.jp-OutputArea .attnmap').__attnmap.header")
    assert header["stacks"][0]["shape"] == [2, 2, n, n]
    assert not [e for e in page.errors if "attnmap" in e]
