"""Shared fixtures: tiny models built once per test session (no network)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _models  # noqa: E402

HOSTILE = [
    "</script><script>window.__pwned=1</script>",
    "<img src=x onerror=\"window.__pwned=1\">",
    "<!--",
    "\"'`",
    "a\u2028b",
]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def gpt2_dir(models_dir) -> Path:
    return _models.build_gpt2(models_dir / "gpt2")


@pytest.fixture(scope="session")
def bert_dir(models_dir) -> Path:
    return _models.build_bert(models_dir / "bert")


@pytest.fixture(scope="session")
def t5_dir(models_dir) -> Path:
    return _models.build_t5(models_dir / "t5")


@pytest.fixture(scope="session")
def bart_dir(models_dir) -> Path:
    return _models.build_bart(models_dir / "bart")


@pytest.fixture(scope="session")
def hostile_gpt2_dir(models_dir) -> Path:
    """A GPT-2 whose vocabulary holds tokens that are markup and script."""
    return _models.build_gpt2(models_dir / "hostile", extra_tokens=HOSTILE)


@pytest.fixture(scope="session")
def long_gpt2_dir(models_dir) -> Path:
    """A tiny GPT-2 with 512 positions: a generation long enough that Stop, clicked at its
    first token, always lands before it ends."""
    return _models.build_gpt2(models_dir / "gpt2-long", n_positions=512)


@pytest.fixture(scope="session")
def vit_dir(models_dir) -> Path:
    import _vision

    return _vision.build_vit(models_dir / "vit")


@pytest.fixture(scope="session")
def dinoreg_dir(models_dir) -> Path:
    import _vision

    return _vision.build_dinov2_registers(models_dir / "dinoreg")


@pytest.fixture(scope="session")
def llava_dir(models_dir) -> Path:
    import _vision

    return _vision.build_llava(models_dir / "llava")


@pytest.fixture(scope="session")
def gpt2_run(gpt2_dir):
    import attnmap

    return attnmap.capture("The cat that sat on the mat was black.\nIt was.", model=gpt2_dir)


@pytest.fixture(scope="session")
def minilm_run():
    import attnmap

    return attnmap.capture("The cat that sat on the mat was black.")


SERVER_MAX_RUNS = 32


@pytest.fixture(scope="session")
def app_server(gpt2_dir, hostile_gpt2_dir, long_gpt2_dir):
    """The one real `attnmap serve` process of the test run (127.0.0.1, a free port): the tiny
    GPT-2 (the default for requests that name no model), the hostile one and one with 512
    positions, 32 runs kept.
    Tests that need real sockets or a browser share it; everything else uses the app in
    process through FastAPI's TestClient."""
    from _server import start

    server = start("--model", str(gpt2_dir), "--model", str(hostile_gpt2_dir),
                   "--model", str(long_gpt2_dir), "--max-runs", str(SERVER_MAX_RUNS))
    yield server
    server.stop()
