"""Chat input through the tokenizer's own template, the new model options, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import _models
import _zoo
import attnmap
from attnmap import AttnmapError
from attnmap.cli import main

MESSAGES = [
    {"role": "system", "content": "You are a cat."},
    {"role": "user", "content": "Where did the cat sit?"},
    {"role": "assistant", "content": "On the mat."},
]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama-2 style: the template writes BOS itself
BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
                "{{ m['content'] }} [/INST]{% elif m['role'] == 'system' %}<<SYS>>"
                "{{ m['content'] }}<</SYS>>{% else %} {{ m['content'] }}{{ eos_token }}"
                "{% endif %}{% endfor %}")


def _tok(template):
    tok = _models.train_tokenizer()
    if template is CHATML:
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module", params=["chatml", "bos"])
def chat_model(request, tmp_path_factory):
    """A tiny Llama with GQA and a chat template, saved to a folder the CLI can load."""
    tok = _tok(CHATML if request.param == "chatml" else BOS_TEMPLATE)
    model = _zoo.build("llama", tok)
    path = tmp_path_factory.mktemp(f"chat-{request.param}")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return request.param, model, tok, path


def _ids(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_chat_ids_are_the_templates_and_tokens_know_their_message(chat_model):
    kind, model, tok, _ = chat_model
    run = attnmap.capture(MESSAGES, model=model, tokenizer=tok)
    ids = [t.id for t in run.tokens]
    assert ids == _ids(tok, MESSAGES)
    if kind == "bos":
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # no double BOS
        assert ids.count(tok.bos_token_id) == 1
    assert run.extra["messages"] == MESSAGES
    for i, m in enumerate(MESSAGES):
        content = [t for t in run.tokens if t.message == i and not t.template]
        assert content and all(t.role == m["role"] for t in content)
        # the content tokens spell the message exactly
        assert "".join(run.text[t.start:t.end] for t in content) .replace(" ", "") == \
            m["content"].replace(" ", "")
    # the template's own tokens (role markers, BOS, turn ends) are flagged
    assert run.tokens[0].template
    assert any(t.template and t.message == 1 for t in run.tokens)


def test_chat_run_file_keeps_roles(chat_model, tmp_path):
    _, model, tok, _ = chat_model
    run = attnmap.capture(MESSAGES, model=model, tokenizer=tok)
    back = attnmap.load(run.save(tmp_path / "chat.safetensors"))
    assert [(t.message, t.role, t.template) for t in back.tokens] == \
        [(t.message, t.role, t.template) for t in run.tokens]
    assert back.extra["messages"] == MESSAGES


def test_plain_text_is_unchanged_and_special_tokens_can_go(chat_model):
    _, model, tok, _ = chat_model
    text = "The cat sat."
    run = attnmap.capture(text, model=model, tokenizer=tok)
    assert [t.id for t in run.tokens] == tok(text)["input_ids"]
    assert all(t.message is None and not t.template for t in run.tokens)
    bare = attnmap.capture(text, model=model, tokenizer=tok, special_tokens=False)
    assert [t.id for t in bare.tokens] == tok(text, add_special_tokens=False)["input_ids"]


def test_cli_chat_render_with_role_bands(chat_model, tmp_path, capsys):
    kind, _, tok, path = chat_model
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(MESSAGES), encoding="utf-8")
    out = tmp_path / "chat.png"
    assert main(["render", "--chat", "--file", str(chat), "--model", str(path), "-o", str(out),
                 "--layer", "-1", "-q"]) == 0
    from PIL import Image

    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # the user band's colour is drawn (only role bands use it)
    user = np.array([0x4C, 0x78, 0xA8])
    assert (np.abs(img - user).sum(axis=2) < 12).sum() > 50
    run_file = tmp_path / "chat.safetensors"
    assert main(["capture", "--chat", json.dumps(MESSAGES), "--model", str(path), "-o",
                 str(run_file), "-q"]) == 0
    assert [t.id for t in attnmap.load(run_file).tokens] == _ids(tok, MESSAGES)


@pytest.mark.parametrize("payload,message", [
    ('{"role": "user"}', "non-empty JSON list"),
    ("[1, 2]", "must be an object"),
    ('[{"role": "user", "content": 5}]', "content must be a string"),
    ('[{"role": "", "content": "hi"}]', "role must be a non-empty string"),
    ("[{'role': 'user'}]", "is not JSON"),
])
def test_cli_bad_messages_are_one_line(chat_model, payload, message, capsys):
    _, _, _, path = chat_model
    assert main(["render", "--chat", payload, "--model", str(path), "-o", "x.png", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("attnmap: error:")


def test_tokenizer_without_chat_template(gpt2_dir, capsys):
    assert main(["render", "--chat", json.dumps(MESSAGES), "--model", str(gpt2_dir),
                 "-o", "x.png", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no chat template" in err[0]


@pytest.mark.parametrize("args,message", [
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--torch-dtype", "float8"], "unknown dtype 'float8'"),
    (["--device", "cuda"], "is not available here"),
    (["--device", "mps"], "is not available here"),
    (["--device-map", "auto"], "accelerate"),
])
def test_cli_bad_device_and_dtype(gpt2_dir, args, message, capsys, tmp_path):
    import importlib.util

    import torch

    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if args[0] == "--device-map" and importlib.util.find_spec("accelerate") is not None:
        pytest.skip("accelerate is installed here")
    out = tmp_path / "x.png"
    out.write_bytes(b"old")
    assert main(["render", "hello there", "--model", str(gpt2_dir), "-o", str(out), "-q",
                 *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert out.read_bytes() == b"old"  # nothing already written is lost


def test_dtype_choice_and_float32_default_on_cpu(gpt2_dir):
    run = attnmap.capture("The cat sat on the mat.", model=gpt2_dir)
    assert run.model["dtype"] == "float32" and run.model["device"] == "cpu"
    sums = np.where(run.mask(0), 0, run.layer(0)).sum(-1)
    assert np.abs(sums - 1).max() <= 1e-6
    half = attnmap.capture("The cat sat on the mat.", model=gpt2_dir, torch_dtype="bfloat16")
    assert half.model["dtype"] == "bfloat16"
    assert np.abs(half.layer(0) - run.layer(0)).max() <= 2e-2


def test_non_text_models_are_refused_in_one_line(tmp_path, capsys):
    from transformers import ViTConfig, ViTModel, WhisperConfig, WhisperForConditionalGeneration

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, image_size=28, patch_size=14)).save_pretrained(vit)
    whisper = tmp_path / "whisper"
    WhisperForConditionalGeneration(WhisperConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
        max_source_positions=16, max_target_positions=16, num_mel_bins=8, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, suppress_tokens=[],
        begin_suppress_tokens=[],
    )).save_pretrained(whisper)
    capsys.readouterr()  # save_pretrained's own progress lines
    for path, what in ((vit, "images (pixel_values)"), (whisper, "audio features")):
        assert main(["render", "a cat", "--model", str(path), "-o", str(tmp_path / "x.png"),
                     "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0] and "not text" in err[0]
        assert main(["info", "--model", str(path)]) == 2
        assert what in capsys.readouterr().err


def test_info_says_causal_for_base_and_wrapped_causal_models(tmp_path, capsys):
    tok = _models.train_tokenizer()
    for name in ("llama-base", "qwen2-classifier", "gemma3-multimodal"):
        path = tmp_path / name
        _zoo.build(name, tok).save_pretrained(path)
        tok.save_pretrained(path)
        capsys.readouterr()
        assert main(["info", "--model", str(path), "--json"]) == 0
        facts = json.loads(capsys.readouterr().out)
        assert facts["causal"] is True and facts["architecture"] == "decoder", name


def test_t5_encoder_model_captures(tmp_path):
    tok = _models.train_tokenizer()
    path = tmp_path / "t5enc"
    _zoo.build("t5-encoder", tok).save_pretrained(path)
    tok.save_pretrained(path)
    run = attnmap.capture("The cat sat on the mat.", model=path)
    assert list(run.stacks) == ["self"] and not run.causal
    assert run.model["class"] == "T5EncoderModel"


def test_messages_api_errors(chat_model):
    _, model, tok, _ = chat_model
    with pytest.raises(AttnmapError, match="non-empty JSON list"):
        attnmap.capture([], model=model, tokenizer=tok)
    with pytest.raises(AttnmapError, match='"role" and "content"'):
        attnmap.capture([{"content": "hi"}], model=model, tokenizer=tok)
