"""`attnmap serve --cmap`: the app's payloads carry the colormap it was started with."""

from __future__ import annotations

import base64

import pytest

from attnmap.cli import main
from attnmap.viewer import payload as P
from attnmap.viewer.colours import lut


def test_app_payload_carries_its_cmap(gpt2_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from attnmap.app.server import create_app

    app = create_app([str(gpt2_dir)], cmap="viridis")
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post("/api/runs", json={"text": "the cat sat", "model": str(gpt2_dir)})
        assert r.status_code == 201, r.text
        head = P.decode(c.get(f"/api/runs/{r.json()['id']}/payload").content)["header"]
    assert head["colormap"]["name"] == "viridis"
    assert base64.b64decode(head["colormap"]["lut"]) == lut("viridis")


def test_serve_unknown_cmap_exits_2_before_listening(capsys):
    pytest.importorskip("fastapi")
    assert main(["serve", "--cmap", "Bleus", "--no-browser", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown colormap 'Bleus'" in err[0]
