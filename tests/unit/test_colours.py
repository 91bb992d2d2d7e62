"""The colormap in the payload: matplotlib's table, --cmap / cmap= everywhere, bad names."""

from __future__ import annotations

import base64
import dataclasses

import matplotlib as mpl
import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap.cli import main
from attnmap.viewer import payload as P
from attnmap.viewer import to_html
from attnmap.viewer.colours import check_cmap, lut

from ..integration.test_html_cli import payload_of


def _run(tokens=None, n: int = 4) -> AttentionRun:
    toks = tokens or [Token(text=f"t{i}", raw=f"t{i}", id=i) for i in range(n)]
    n = len(toks)
    masked = np.triu(np.ones((n, n), dtype=bool), k=1)  # [query, key]
    w = np.where(masked, 0, 1.0).astype(np.float32)[None]  # [head, query, key]
    w /= w.sum(axis=2, keepdims=True)
    return AttentionRun(tokens=toks, stacks={"self": AttentionStack("self", [w], masked)},
                        model={"id": "c"}, text=" ".join(t.text for t in toks))


def _table(entry) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["lut"]), np.uint8).reshape(256, 3)


@pytest.mark.parametrize("name", ["Blues", "viridis", "magma", "RdBu_r"])
def test_table_is_matplotlibs_and_entry_i_holds_bin_i(name):
    table = np.frombuffer(lut(name), np.uint8).reshape(256, 3)  # [entry, channel]
    v = np.random.default_rng(0).random(5000)
    want = np.asarray(mpl.colormaps[name](v, bytes=True))[:, :3]
    assert np.array_equal(table[np.minimum(255, np.floor(v * 256).astype(int))], want)
    assert np.array_equal(table[255], mpl.colormaps[name](1.0, bytes=True)[:3])


def test_header_carries_the_sequential_and_diverging_tables():
    head = P.decode(P.encode(_run()))["header"]
    assert (head["colormap"]["name"], head["diverging"]["name"]) == ("Blues", "RdBu_r")
    assert np.array_equal(_table(head["colormap"]).tobytes(), lut("Blues"))
    other = P.decode(P.encode(_run(), layers="none", cmap="magma"))["header"]
    assert np.array_equal(_table(other["colormap"]).tobytes(), lut("magma"))
    assert head["version"] == other["version"] == P.PAYLOAD_VERSION == 1


def test_unknown_cmap_is_one_clear_error():
    with pytest.raises(AttnmapError, match=r"unknown colormap 'Bleus'; try Blues"):
        check_cmap("Bleus")
    with pytest.raises(AttnmapError, match="unknown colormap"):
        to_html(_run(), cmap="Bleus")
    with pytest.raises(AttnmapError, match="unknown colormap"):
        P.encode(_run(), cmap="Bleus")


def test_show_takes_cmap():
    pytest.importorskip("anywidget")
    from attnmap.viewer import show

    w = show(_run(), cmap="viridis", layer=0)
    assert P.decode(w.payload)["header"]["colormap"]["name"] == "viridis"
    assert w.options == {"layer": 0}


def test_html_cli_cmap(tmp_path, capsys):
    src = tmp_path / "run.safetensors"
    _run().save(src)
    out = tmp_path / "page.html"
    assert main(["html", "--run", str(src), "--cmap", "magma", "-o", str(out), "--quiet"]) == 0
    head = payload_of(out.read_text("utf-8"))["header"]
    assert head["colormap"]["name"] == "magma"
    capsys.readouterr()
    bad = tmp_path / "bad.html"
    assert main(["html", "--run", str(src), "--cmap", "Bleus", "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown colormap 'Bleus'" in err[0] and "Traceback" not in err[0]
    assert not bad.exists()


def test_roles_travel_only_when_tokens_have_them():
    (plain,) = P.header(_run())["stacks"]
    assert not {"query_roles", "key_roles", "query_messages", "key_messages"} & set(plain)

    @dataclasses.dataclass(frozen=True)
    class ChatToken(Token):
        role: str | None = None
        message: int | None = None

    toks = [ChatToken(text=f"t{i}", raw=f"t{i}", id=i, role=r, message=m)
            for i, (r, m) in enumerate([("system", 0), ("user", 1), ("user", 1), (None, None)])]
    (chat,) = P.header(_run(toks))["stacks"]
    assert chat["query_roles"] == chat["key_roles"] == ["system", "user", "user", None]
    assert chat["query_messages"] == chat["key_messages"] == [0, 1, 1, None]
