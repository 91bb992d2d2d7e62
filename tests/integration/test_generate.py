"""attnmap.generate and `attnmap generate`: the ids are model.generate's, every generated row
is the attention of its own decoding step, and the whole matrix is what one forward over the
finished sequence computes (tiny real models from configs, no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import _models
import _zoo
import attnmap
from attnmap import AttnmapError
from attnmap.cli import main
from attnmap.generating import generate_kwargs

PROMPT = "The cat that sat on the mat"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "system", "content": "You are a cat."},
            {"role": "user", "content": "Where did the cat sit?"}]


@pytest.fixture(scope="module")
def tok():
    return _models.train_tokenizer()


@pytest.fixture(scope="module")
def zoo(tok):
    """Llama (grouped-query), Qwen2 with sliding-window layers, GPT-2, T5; EOS = the
    tokenizer's."""
    out = {}
    for name in ("llama", "qwen2-sliding", "gpt2", "t5"):
        model = _zoo.build(name, tok)
        model.generation_config.eos_token_id = tok.eos_token_id
        out[name] = model
    return out


def _plain(model, tok, ids, max_new_tokens, **kw):
    """model.generate as a user calls it, with attentions (and a sliding window's own
    cache): the reference."""
    inp = torch.tensor([ids])
    settings = generate_kwargs(model, tok, max_new_tokens=max_new_tokens, **kw)
    with torch.no_grad():
        return model.generate(input_ids=inp, attention_mask=torch.ones_like(inp),
                              output_attentions=True, return_dict_in_generate=True, **settings)


def _layers(run, stack="self"):
    return [np.asarray(a) for a in run.stacks[stack].layers]


@pytest.mark.parametrize("name", ["llama", "qwen2-sliding", "gpt2"])
@pytest.mark.parametrize("store", ["weights", "qk"])
def test_rows_are_the_steps_attention_and_one_forward_agrees(zoo, tok, name, store):
    model = zoo[name]
    run = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=10, store=store)
    n = run.extra["generation"]["prompt_tokens"]
    ids = [t.id for t in run.tokens]
    assert [t.generated for t in run.tokens] == [False] * n + [True] * (len(ids) - n)
    assert len(ids) - n == run.extra["generation"]["generated_tokens"] >= 1
    ref = _plain(model, tok, ids[:n], 10)
    assert ref.sequences[0].tolist() == ids  # the same ids as model.generate
    got = _layers(run)
    assert run.extra["generation"]["store"] == store
    for layer, w in enumerate(got):
        # the prompt's rows: generate's first forward
        np.testing.assert_allclose(w[:, :n, :n], ref.attentions[0][layer][0].numpy(), atol=1e-5)
        # generated token g's row: the decoding step that fed g (generate's step s feeds the
        # token at position n + s - 1); a sliding window's cache keeps only the window, so
        # the step's row is the last keys and everything before them is masked
        for s in range(1, len(ref.attentions)):
            row = ref.attentions[s][layer][0, :, 0].numpy()
            mine = w[:, n + s - 1, : n + s]
            np.testing.assert_allclose(mine[:, -row.shape[-1]:], row, atol=1e-5)
            assert np.all(mine[:, : n + s - row.shape[-1]] == 0)
            assert run.mask(layer)[n + s - 1, : n + s - row.shape[-1]].all()
    # and one forward over the finished sequence gives the same rows, the last one included
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids]), output_attentions=True)
    for layer, w in enumerate(got):
        np.testing.assert_allclose(w, full.attentions[layer][0].numpy(), atol=1e-5)
        assert not np.any(w[:, run.mask(layer)])  # hidden cells hold 0


def test_weights_and_qk_store_agree_and_the_masks_are_per_layer(zoo, tok):
    a = attnmap.generate(PROMPT, model=zoo["qwen2-sliding"], tokenizer=tok, max_new_tokens=8,
                         store="weights")
    b = attnmap.generate(PROMPT, model=zoo["qwen2-sliding"], tokenizer=tok, max_new_tokens=8,
                         store="qk")
    assert type(b.stacks["self"].layers).__name__ == "QKLayers"
    for x, y in zip(_layers(a), _layers(b)):
        np.testing.assert_allclose(x, y, atol=1e-5)
    n = len(a.tokens)
    # layers 0 and 2 slide (window 4): the last token cannot see the first; layer 1 can
    assert a.mask(0)[n - 1, 0] and not a.mask(1)[n - 1, 0] and a.mask(2)[n - 1, 0]
    assert all(np.array_equal(a.mask(i), b.mask(i)) for i in range(3))


def test_auto_store_keeps_queries_and_keys_past_the_weights_limit(zoo, tok, monkeypatch):
    from attnmap import capturing

    # 2 layers × 4 heads × 4 bytes: a 1,600-byte budget holds the weights of 10 tokens
    monkeypatch.setattr(capturing, "WEIGHTS_BUDGET", 1600)
    short = attnmap.generate("The cat", model=zoo["llama"], tokenizer=tok, max_new_tokens=2)
    long = attnmap.generate(PROMPT, model=zoo["llama"], tokenizer=tok, max_new_tokens=8)
    assert len(short.tokens) <= 10 and short.extra["generation"]["store"] == "weights"
    assert long.extra["generation"]["store"] == "qk"
    assert type(long.stacks["self"].layers).__name__ == "QKLayers"


def test_predictions_are_each_steps_numbers(zoo, tok):
    model = zoo["llama"]
    run = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=6, top_k=3)
    n = run.extra["generation"]["prompt_tokens"]
    preds = run.extra["predictions"]
    assert run.extra["predictions_kind"] == "generate"
    ids = [t.id for t in run.tokens]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    probs = torch.softmax(logits.float(), -1)
    assert [p["position"] for p in preds] == list(range(n - 1, len(ids) - 1))
    for rec in preds:
        pos = rec["position"]
        chosen = ids[pos + 1]
        assert rec["token"] == run.tokens[pos].text
        assert len(rec["top"]) == 3
        assert rec["top"][0]["p"] == pytest.approx(float(probs[pos].max()), abs=1e-5)
        assert rec["next"]["token"] == run.tokens[pos + 1].text
        assert rec["next"]["p"] == pytest.approx(float(probs[pos, chosen]), abs=1e-5)
        assert rec["next"]["rank"] == 1  # greedy: the chosen token is the top one
        h = float(-(probs[pos] * torch.log2(probs[pos])).sum())
        assert rec["entropy"] == pytest.approx(h, abs=1e-3)


def test_sampling_with_a_seed_is_repeatable_and_equals_model_generate(zoo, tok):
    model = zoo["gpt2"]
    kw = dict(do_sample=True, temperature=1.5, top_p=0.95)
    a = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=12, seed=7, **kw)
    b = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=12, seed=7, **kw)
    c = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=12, seed=8, **kw)
    ids = [t.id for t in a.tokens]
    assert ids == [t.id for t in b.tokens] and ids != [t.id for t in c.tokens]
    n = a.extra["generation"]["prompt_tokens"]
    torch.manual_seed(7)
    ref = _plain(model, tok, ids[:n], 12, **kw)
    assert ref.sequences[0].tolist() == ids
    # sampled: some chosen token is not the top one, and its rank says so
    ranks = [p["next"]["rank"] for p in a.extra["predictions"]]
    assert max(ranks) > 1


def test_stops_at_a_stop_string_and_at_eos(zoo, tok):
    model = zoo["gpt2"]
    free = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=10)
    assert free.extra["generation"]["stopped"] == "length"
    first = [t for t in free.tokens if t.generated][0]
    stop = tok.decode([first.id])
    run = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=10, stop=stop)
    assert run.extra["generation"]["stopped"] == "stop"
    assert sum(t.generated for t in run.tokens) == 1
    # EOS: make the first greedy token the end of sequence
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = first.id
    try:
        eos = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=10)
    finally:
        model.generation_config.eos_token_id = saved
    assert eos.extra["generation"]["stopped"] == "eos"
    assert [t.id for t in eos.tokens if t.generated] == [first.id]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    tok = _models.train_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model = _zoo.build("qwen2-sliding", tok)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    path = tmp_path_factory.mktemp("qwen-chat")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, path


def test_chat_roles_and_the_reply_is_its_own_turn(chat):
    model, tok, _ = chat
    run = attnmap.generate(MESSAGES, model=model, tokenizer=tok, max_new_tokens=8)
    prompt_ids = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    ids = [t.id for t in run.tokens]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert _plain(model, tok, prompt_ids, 8).sequences[0].tolist() == ids
    gen = [t for t in run.tokens if t.generated]
    assert gen and all(t.message == 2 and t.role == "assistant" for t in gen)
    # the generation prompt's "<|im_start|>assistant" opens the same turn, as template text
    header = [t for t in run.tokens if t.message == 2 and not t.generated]
    assert header and all(t.template for t in header) and header[0].text == "<|im_start|>"
    for i, m in enumerate(MESSAGES):
        assert any(t.message == i and t.role == m["role"] and not t.template
                   for t in run.tokens)
    assert run.extra["messages"][:2] == MESSAGES
    assert run.extra["messages"][2] == {"role": "assistant",
                                        "content": run.extra["generated_text"]}


def test_t5_records_decoder_self_and_cross_attention_per_step(zoo, tok):
    model = zoo["t5"]
    run = attnmap.generate(PROMPT, model=model, tokenizer=tok, max_new_tokens=5)
    src = [t.id for t in run.tokens]
    dec = [t.id for t in run.target_tokens]
    assert [t.generated for t in run.target_tokens] == [False] + [True] * (len(dec) - 1)
    ref = _plain(model, tok, src, 5)
    assert ref.sequences[0].tolist() == dec
    d, c = _layers(run, "decoder"), _layers(run, "cross")
    for layer in range(len(d)):
        for s in range(len(ref.decoder_attentions)):
            np.testing.assert_allclose(d[layer][:, s, : s + 1],
                                       ref.decoder_attentions[s][layer][0, :, 0], atol=1e-5)
            np.testing.assert_allclose(c[layer][:, s],
                                       ref.cross_attentions[s][layer][0, :, 0], atol=1e-5)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]),
                     output_attentions=True)
    for layer in range(len(d)):
        np.testing.assert_allclose(d[layer], full.decoder_attentions[layer][0], atol=1e-5)
        np.testing.assert_allclose(c[layer], full.cross_attentions[layer][0], atol=1e-5)
        np.testing.assert_allclose(_layers(run, "encoder")[layer],
                                   full.encoder_attentions[layer][0], atol=1e-5)
    assert [p["position"] for p in run.extra["predictions"]] == list(range(len(dec) - 1))


def test_run_file_keeps_generated_tokens_and_step_predictions(zoo, tok, tmp_path):
    run = attnmap.generate(PROMPT, model=zoo["llama"], tokenizer=tok, max_new_tokens=4)
    back = attnmap.load(run.save(tmp_path / "gen.safetensors"))
    assert [t.generated for t in back.tokens] == [t.generated for t in run.tokens]
    assert back.extra["predictions"] == run.extra["predictions"]
    np.testing.assert_allclose(_layers(back)[1], _layers(run)[1], atol=1e-6)


def test_cli_generate_prints_the_text_and_writes_every_output(chat, tmp_path, capsys):
    _, _, path = chat
    chat_file = tmp_path / "chat.json"
    chat_file.write_text(json.dumps(MESSAGES))
    out = tmp_path / "gen.safetensors"
    assert main(["generate", "--chat", "--file", str(chat_file), "--model", str(path),
                 "--max-new-tokens", "5", "-o", str(out), "-q"]) == 0
    run = attnmap.load(out)
    printed = capsys.readouterr().out
    assert printed == run.extra["generated_text"] + "\n"
    assert [t.role for t in run.tokens if t.generated] == \
        ["assistant"] * run.extra["generation"]["generated_tokens"]
    for name in ("gen.html", "gen.png"):
        assert main(["generate", PROMPT, "--model", str(path), "-n", "3", "-o",
                     str(tmp_path / name), "-q"]) == 0
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "gen.png").read_bytes()[:4] == b"\x89PNG"
    steps = tmp_path / "steps.png"
    assert main(["render", "--run", str(out), "--generated-only", "--layer", "-1", "--head",
                 "0", "-o", str(steps), "-q"]) == 0
    assert steps.read_bytes()[:4] == b"\x89PNG"
    # seeded sampling through the command is repeatable
    capsys.readouterr()
    texts = []
    for _ in range(2):
        assert main(["generate", PROMPT, "--model", str(path), "-n", "6", "--sample",
                     "--temperature", "2", "--seed", "3", "-q"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].strip()


def test_figures_of_the_generated_rows(zoo, tok):
    from attnmap import plot

    run = attnmap.generate(PROMPT, model=zoo["gpt2"], tokenizer=tok, max_new_tokens=5)
    fig = plot.heatmap(run, -1, "mean", generated_only=True)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [t.text for t in run.tokens if t.generated]
    assert ax.images[0].get_array().shape == (5, len(run.tokens))
    fig = plot.steps(run, -1, 0)
    assert fig.axes[0].images[0].get_array().shape == (5, len(run.tokens))
    plain = attnmap.capture(PROMPT, model=zoo["gpt2"], tokenizer=tok)
    with pytest.raises(AttnmapError, match="no generated tokens"):
        plot.heatmap(plain, 0, 0, generated_only=True)


@pytest.mark.parametrize("argv, message", [
    (["-n", "0"], "max_new_tokens must be at least 1"),
    (["-n", "500"], "max_new_tokens 500 is above what fits"),
    (["-n", "3", "--temperature", "0.5"], "add --sample"),
    (["-n", "3", "--sample", "--top-p", "1.5"], "top_p must be above 0"),
    (["-n", "3", "-o", "gen.txt"], "must end in .html"),
])
def test_cli_bad_input_is_one_line(chat, argv, message, capsys, tmp_path, monkeypatch):
    _, _, path = chat
    monkeypatch.chdir(tmp_path)
    assert main(["generate", PROMPT, "--model", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnmap: error: ") and message in err and "\n" not in err


def test_bad_input_errors(zoo, tok):
    long = " ".join(["cat"] * 140)  # past the 128 positions of the tiny models
    with pytest.raises(AttnmapError, match="maximum is 128; no room is left"):
        attnmap.generate(long, model=zoo["llama"], tokenizer=tok, max_new_tokens=1)
    head_less = _zoo.build("llama-base", tok)
    with pytest.raises(AttnmapError, match="no language-model head .* cannot sample"):
        attnmap.generate(PROMPT, model=head_less, tokenizer=tok, do_sample=True)
    with pytest.raises(AttnmapError, match="store='qk' is for decoder-only"):
        attnmap.generate(PROMPT, model=zoo["t5"], tokenizer=tok, store="qk")
    with pytest.raises(AttnmapError, match="max_new_tokens must be a whole number"):
        attnmap.generate(PROMPT, model=zoo["gpt2"], tokenizer=tok, max_new_tokens=2.5)


def test_render_steps_from_a_generated_run_file(zoo, tok, tmp_path, capsys):
    run = attnmap.generate(PROMPT, model=zoo["gpt2"], tokenizer=tok, max_new_tokens=4)
    path = run.save(tmp_path / "gen.safetensors")
    out = tmp_path / "steps.svg"
    assert main(["render", "--run", str(path), "--steps", "--head", "mean", "-o", str(out),
                 "-q"]) == 0, capsys.readouterr().err
    svg = out.read_text("utf-8")
    import html

    generated = [t.text for t in run.tokens if t.generated]
    assert len(generated) == 4
    assert all(html.escape(g, quote=False) in svg for g in generated)  # each step is named
    assert main(["render", "--run", str(path), "--steps", "--overview", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "--steps" in capsys.readouterr().err
