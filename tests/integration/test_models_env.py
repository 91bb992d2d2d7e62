"""Loading a model leaves the process as it found it, asks huggingface_hub (not a socket) whether
the hub can be reached, and turns the failures a user can fix into one line."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import attnmap
from attnmap import models

UNCACHED = "attnmap-tests/not-in-any-cache-xyz"


@pytest.fixture
def fresh_gpt2(gpt2_dir, tmp_path):
    """A copy of the tiny GPT-2 under a new path, so that capture loads it (no reuse)."""
    return shutil.copytree(gpt2_dir, tmp_path / "gpt2")


@pytest.fixture
def transformers_settings():
    """Put transformers' verbosity, progress bar and tqdm hook back after the test."""
    from transformers.utils import logging as tf_logging

    verbosity = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    hook = tf_logging.set_tqdm_hook(None)
    tf_logging.set_tqdm_hook(hook)
    yield tf_logging
    tf_logging.set_verbosity(verbosity)
    (tf_logging.enable_progress_bar if bars else tf_logging.disable_progress_bar)()
    tf_logging.set_tqdm_hook(hook)


@pytest.fixture
def no_sockets(monkeypatch):
    """Every socket connection is refused and recorded; backoff sleeps are recorded too."""
    attempts: list[object] = []
    sleeps: list[float] = []

    def refuse_create(address, *args, **kwargs):
        attempts.append(tuple(address))
        raise ConnectionRefusedError(f"test: no connection to {address}")

    def refuse_connect(self, address):
        attempts.append(tuple(address) if isinstance(address, tuple) else address)
        raise ConnectionRefusedError(f"test: no connection to {address}")

    real_sleep = time.sleep

    def sleep(seconds):
        sleeps.append(seconds)
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(socket, "create_connection", refuse_create)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(time, "sleep", sleep)
    return attempts, sleeps


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub as if HF_HUB_OFFLINE were not set (the test session sets it), with its
    HTTP client made anew so that it reads the proxy variables a test sets."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    huggingface_hub.close_session()
    yield monkeypatch
    huggingface_hub.close_session()


def _settle_hub_client(attempts: list[object]) -> None:
    """Let huggingface_hub make the requests it makes once per process (its user-agent
    registry) before the test counts connections."""
    from huggingface_hub.utils import build_hf_headers

    build_hf_headers()
    attempts.clear()


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("start", ["info-bars-on", "debug-bars-off"])
def test_capture_restores_transformers_settings(start, fresh_gpt2, transformers_settings,
                                               capfd):
    tf_logging = transformers_settings
    if start == "info-bars-on":
        tf_logging.set_verbosity_info()
        tf_logging.enable_progress_bar()
    else:
        tf_logging.set_verbosity_debug()
        tf_logging.disable_progress_bar()
    verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()

    def users_hook(factory, args, kwargs):
        return factory(*args, **kwargs)

    tf_logging.set_tqdm_hook(users_hook)
    capfd.readouterr()
    run = attnmap.capture("The cat sat on the mat.", model=fresh_gpt2)
    err = capfd.readouterr().err
    assert run.n_layers == 2
    assert tf_logging.get_verbosity() == verbosity
    assert tf_logging.is_progress_bar_enabled() == bars
    assert tf_logging.set_tqdm_hook(None) is users_hook
    # quiet while it loaded: no transformers info lines, no loading-weights bar
    assert "Loading weights" not in err, err
    assert "loading configuration file" not in err.lower(), err


def test_hub_download_bars_stay_on(fresh_gpt2, transformers_settings, monkeypatch):
    from huggingface_hub import utils as hub_utils

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set in this environment")
    hub_utils.enable_progress_bars()
    seen: list[bool] = []
    real_load_model = models._load_model

    def load_model(*args, **kwargs):  # the moment weights would be downloaded
        seen.append(hub_utils.are_progress_bars_disabled())
        return real_load_model(*args, **kwargs)

    monkeypatch.setattr(models, "_load_model", load_model)
    attnmap.capture("The cat sat on the mat.", model=fresh_gpt2)
    assert seen == [False]
    assert not hub_utils.are_progress_bars_disabled()


def test_uncached_hub_id_goes_through_the_proxy_once(hub_online, no_sockets):
    """The question "can the hub be reached" is asked by huggingface_hub, so HTTPS_PROXY is
    used; it is asked once, with no retries and no backoff."""
    attempts, sleeps = no_sockets
    hub_online.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    hub_online.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    _settle_hub_client(attempts)
    with pytest.raises(attnmap.AttnmapError) as exc_info:
        attnmap.capture("hi", model=UNCACHED)
    msg = _one_line(exc_info)
    assert msg.startswith(f"cannot load model {UNCACHED!r}: it is not in the local Hugging "
                          "Face cache and the hub cannot be reached"), msg
    assert "--model PATH" in msg and "bundled" in msg and "offline" in msg, msg
    assert attempts == [("127.0.0.1", 9)], attempts  # the proxy, once; never the hub itself
    assert sleeps == []


def test_uncached_hub_id_with_unreachable_endpoint(hub_online, no_sockets):
    from huggingface_hub import constants

    attempts, sleeps = no_sockets
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        hub_online.delenv(var, raising=False)
    endpoint = "http://127.0.0.1:9"
    hub_online.setattr(constants, "ENDPOINT", endpoint)
    hub_online.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                       endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    _settle_hub_client(attempts)
    for call in (lambda: attnmap.capture("hi", model=UNCACHED),
                 lambda: models.describe(UNCACHED)):
        attempts.clear()
        with pytest.raises(attnmap.AttnmapError) as exc_info:
            call()
        msg = _one_line(exc_info)
        assert "not in the local Hugging Face cache and the hub cannot be reached" in msg, msg
        assert "bundled" in msg, msg
        assert attempts == [("127.0.0.1", 9)], attempts
    assert sleeps == []


def test_offline_mode_is_honoured_without_a_connection(monkeypatch, no_sockets):
    from huggingface_hub import constants

    attempts, sleeps = no_sockets
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for call in (lambda: attnmap.capture("hi", model=UNCACHED),
                 lambda: models.describe(UNCACHED)):
        with pytest.raises(attnmap.AttnmapError) as exc_info:
            call()
        msg = _one_line(exc_info)
        assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg, msg
        assert "leave --model out to use the bundled" in msg, msg
    assert attempts == [] and sleeps == []


def test_cli_uncached_hub_id_answers_at_once_without_offline_mode():
    """The real command, with HF_HUB_OFFLINE unset and a hub that refuses connections."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                        "http_proxy", "ALL_PROXY", "all_proxy")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    res = subprocess.run([sys.executable, "-m", "attnmap", "info", "--model", UNCACHED],
                         capture_output=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "Traceback" not in err and "Retrying" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("attnmap: error:")]
    assert len(lines) == 1, err
    assert "the hub cannot be reached" in lines[0] and "bundled" in lines[0], lines[0]


def _pickle_only(src, dst, *, extra=None):
    """A copy of a saved model whose weights are only a pytorch_model.bin pickle."""
    shutil.copytree(src, dst)
    from safetensors.torch import load_file

    state = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    if extra:
        state.update(extra)
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def _convert(msg: str) -> None:
    """Run the conversion the message gives (its python -c code, in this process)."""
    m = re.search(r'python -c "(.+?)"(?: |$)', msg)
    assert m, msg
    exec(m.group(1), {})  # noqa: S102 - the test's own file, written above


def test_pickle_only_folder_is_one_line_and_the_way_out_works(bert_dir, tmp_path,
                                                             transformers_settings):
    tf_logging = transformers_settings
    tf_logging.set_verbosity_info()
    tf_logging.enable_progress_bar()
    # an old-style checkpoint: a training namespace pickled next to the tensors
    folder = _pickle_only(bert_dir, tmp_path / "pickled",
                          extra={"args": argparse.Namespace(lr=1e-3)})
    with pytest.raises(attnmap.AttnmapError) as exc_info:
        attnmap.capture("The cat sat on the mat.", model=folder)
    msg = _one_line(exc_info)
    assert "pickle (pytorch_model.bin)" in msg and "argparse.Namespace" in msg, msg
    assert "if you trust the file" in msg and "model.safetensors" in msg, msg
    # a failed load puts the settings back too
    assert tf_logging.get_verbosity() == tf_logging.INFO
    assert tf_logging.is_progress_bar_enabled()

    _convert(msg)
    converted = attnmap.capture("The cat sat on the mat.", model=folder)
    original = attnmap.capture("The cat sat on the mat.", model=bert_dir)
    np.testing.assert_allclose(converted.attention, original.attention, atol=1e-6)


def test_pickle_with_torch_too_old_for_transformers(bert_dir, tmp_path, monkeypatch):
    """transformers opens a pickle only with torch >= 2.6; below that, one line that says so
    and a conversion that needs no trust (weights_only=True)."""
    from transformers.utils import import_utils

    real = import_utils.is_torch_greater_or_equal

    def older_torch(version, *args, **kwargs):
        if str(version) == "2.6":
            return False
        return real(version, *args, **kwargs)

    folder = _pickle_only(bert_dir, tmp_path / "pickled")
    monkeypatch.setattr(import_utils, "is_torch_greater_or_equal", older_torch)
    with pytest.raises(attnmap.AttnmapError) as exc_info:
        attnmap.capture("The cat sat on the mat.", model=folder)
    msg = _one_line(exc_info)
    assert "pickle (pytorch_model.bin)" in msg and "torch 2.6 or newer" in msg, msg
    assert "upgrade torch" in msg and "weights_only=True" in msg, msg
    _convert(msg)
    run = attnmap.capture("The cat sat on the mat.", model=folder)
    original = attnmap.capture("The cat sat on the mat.", model=bert_dir)
    np.testing.assert_allclose(run.attention, original.attention, atol=1e-6)

