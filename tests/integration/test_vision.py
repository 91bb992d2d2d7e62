"""Attention over image patches: tiny ViT, DINOv2 with registers and a LLaVA-style VLM, built
from configs with processors made from their classes; pictures drawn here."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

import attnmap
from _cli import run_cli
from _vision import gradient_image
from attnmap import plot_image
from attnmap.patches import patch_indices
from attnmap.vision import capture_image, load_vision

W, H = 64, 40  # a non-square picture


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "gradient.png"
    gradient_image(W, H).save(path)
    return path


@pytest.fixture(scope="module")
def vit_run(vit_dir, picture):
    return capture_image(picture, vit_dir)


@pytest.fixture(scope="module")
def dino_run(dinoreg_dir, picture):
    return capture_image(picture, dinoreg_dir)


def _eager_attentions(model_dir, picture, processor_only=False):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    proc = AutoImageProcessor.from_pretrained(model_dir)
    pixels = proc(images=Image.open(picture).convert("RGB"), return_tensors="pt")["pixel_values"]
    if processor_only:
        return proc, pixels
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True)
    return [a[0].numpy() for a in out.attentions]


@pytest.mark.parametrize("which", ["vit", "dino"])
def test_parity_with_eager_output_attentions(which, vit_dir, dinoreg_dir, picture, vit_run,
                                             dino_run):
    model_dir, run = (vit_dir, vit_run) if which == "vit" else (dinoreg_dir, dino_run)
    ref = _eager_attentions(model_dir, picture)
    assert run.n_layers == len(ref)
    for li, a in enumerate(ref):
        assert run.layer(li).shape == a.shape
        assert np.abs(run.layer(li) - a).max() <= 1e-6
    np.testing.assert_allclose(run.layer(-1).sum(-1), 1.0, atol=1e-5)


def test_tokens_of_vit_and_registers(vit_run, dino_run):
    assert [t.kind for t in vit_run.tokens[:2]] == ["cls", "patch"]
    assert vit_run.tokens[0].special and vit_run.tokens[0].text == "[CLS]"
    # DINOv2 with 4 registers: CLS, the registers, then a 4×4 grid of patches
    kinds = [t.kind for t in dino_run.tokens]
    assert kinds[:5] == ["cls", "register", "register", "register", "register"]
    assert all(t.special for t in dino_run.tokens[:5])
    assert kinds[5:] == ["patch"] * 16 and not any(t.special for t in dino_run.tokens[5:])
    assert [t.text for t in dino_run.tokens[1:5]] == ["[REG0]", "[REG1]", "[REG2]", "[REG3]"]
    assert dino_run.extra["image"]["grid"] == [4, 4]
    assert [(t.row, t.col) for t in dino_run.tokens[5:9]] == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_vit_boxes_of_a_non_square_image(vit_run):
    # ViT's processor squeezes 64×40 into 32×32: each 8-pixel patch covers 16×10 pixels
    meta = vit_run.extra["image"]
    assert (meta["width"], meta["height"], meta["grid"]) == (W, H, [4, 4])
    for t in vit_run.tokens[1:]:
        assert t.box == (t.col * 16, t.row * 10, (t.col + 1) * 16, (t.row + 1) * 10)


@pytest.mark.parametrize("which", ["vit", "dino"])
def test_boxes_hold_the_pixels_the_patch_saw(which, vit_dir, dinoreg_dir, picture, vit_run,
                                              dino_run):
    """The colour at each patch's centre, as the model received it, names where in the
    original picture it came from (red grows with x, green with y): it must lie in the box."""
    model_dir, run = (vit_dir, vit_run) if which == "vit" else (dinoreg_dir, dino_run)
    proc, pixels = _eager_attentions(model_dir, picture, processor_only=True)
    mean = np.asarray(proc.image_mean)[:, None, None]
    std = np.asarray(proc.image_std)[:, None, None]
    rgb = (pixels[0].numpy() * std + mean) * 255  # [channel, y, x]
    ph, pw = run.extra["image"]["patch"]
    for i in patch_indices(run.tokens):
        t = run.tokens[int(i)]
        cy, cx = int((t.row + 0.5) * ph), int((t.col + 0.5) * pw)
        x = rgb[0, cy, cx] / 255 * (W - 1)
        y = rgb[1, cy, cx] / 255 * (H - 1)
        x0, y0, x1, y1 = t.box
        assert x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1, (t, x, y)
    if which == "dino":  # the centre crop leaves the left and right edges out
        boxes = [run.tokens[int(i)].box for i in patch_indices(run.tokens)]
        assert min(b[0] for b in boxes) > 0 and max(b[2] for b in boxes) < W


def test_run_file_keeps_image_grid_boxes_and_thumbnail(dino_run, tmp_path):
    from PIL import Image

    path = dino_run.save(tmp_path / "img.safetensors")
    back = attnmap.load(path)
    assert back.extra["image"] == dino_run.extra["image"]
    assert back.tokens == dino_run.tokens
    png = back.extra["image_png"].tobytes()
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (W, H)
    np.testing.assert_array_equal(back.layer(1), dino_run.layer(1))


def test_large_image_thumbnail_is_bounded(vit_dir, tmp_path):
    from PIL import Image

    big = tmp_path / "big.jpg"
    gradient_image(1600, 900).save(big)
    run = capture_image(big, vit_dir)
    with Image.open(io.BytesIO(run.extra["image_png"].tobytes())) as im:
        assert im.size == (512, 288)
    assert run.tokens[-1].box == (1200, 675, 1600, 900)


def test_hand_edited_image_meta_is_refused(dino_run, tmp_path):
    import dataclasses

    bad = dataclasses.replace(dino_run, extra=dict(dino_run.extra,
                                                   image=dict(dino_run.extra["image"],
                                                              grid=[2, 2])))
    path = bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(attnmap.AttnmapError, match="outside the 2×2 patch grid"):
        attnmap.load(path)


def _grey_run(model_dir, tmp_path):
    from PIL import Image

    grey = tmp_path / "grey.png"
    Image.new("RGB", (W, H), (128, 128, 128)).save(grey)
    return capture_image(grey, model_dir)


def test_overlay_brightest_region_sits_over_the_attended_patch(dinoreg_dir, tmp_path):
    """CLS sends 0.75 of its attention to patch (2, 1) by hand: the darkest blue of the overlay
    must lie in that patch's box of the original picture."""
    import dataclasses

    from attnmap.run import AttentionStack

    run = _grey_run(dinoreg_dir, tmp_path)
    target = next(i for i, t in enumerate(run.tokens) if (t.row, t.col) == (2, 1))
    n = len(run.tokens)
    a = np.full((1, n, n), 1.0 / n, dtype=np.float32)  # [head, query, key]
    a[0, 0, :5] = 0.02  # CLS and the 4 registers: 0.10 off the picture
    a[0, 0, 5:] = 0.01  # the other 15 patches
    a[0, 0, target] = 0.75
    assert a[0, 0].sum() == pytest.approx(1.0)
    run = dataclasses.replace(run, stacks={"self": AttentionStack("self", [a],
                                                                  np.zeros((n, n), bool))})
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plot_image.overlay(run, 0, 0)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)  # [y, x, rgb]
    ax = fig.axes[0]
    bb = ax.get_window_extent()
    fh = buf.shape[0]
    y0, y1 = int(fh - bb.y1) + 2, int(fh - bb.y0) - 2
    x0, x1 = int(bb.x0) + 2, int(bb.x1) - 2
    inside = buf[y0:y1, x0:x1]
    red = inside[..., 0]
    ys, xs = np.nonzero(red <= red.min() + 3)
    inv = ax.transData.inverted()
    pts = inv.transform(np.stack([xs + x0 + 0.5, fh - (ys + y0 + 0.5)], axis=1))
    bx0, by0, bx1, by1 = run.tokens[target].box
    cx, cy = pts[:, 0].mean(), pts[:, 1].mean()
    assert bx0 <= cx <= bx1 and by0 <= cy <= by1, ((cx, cy), run.tokens[target].box)
    frac = np.mean((pts[:, 0] >= bx0 - 1) & (pts[:, 0] <= bx1 + 1)
                   & (pts[:, 1] >= by0 - 1) & (pts[:, 1] <= by1 + 1))
    assert frac > 0.95
    # and the title says how much of the row is not on the picture (CLS and the registers)
    assert "0.10 of the row off the picture" in ax.get_title()


def test_vlm_text_tokens_attend_to_image_patches(llava_dir, picture):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    run = capture_image(picture, llava_dir, prompt="What is on the mat?")
    meta = run.extra["image"]
    assert meta["kind"] == "vlm" and meta["grid"] == [4, 4]
    patches = patch_indices(run.tokens)
    assert len(patches) == 16 and run.causal
    assert run.tokens[-1].text == "?" and run.tokens[-1].row is None
    # parity with the model's own eager output_attentions
    proc = AutoProcessor.from_pretrained(llava_dir)
    model = LlavaForConditionalGeneration.from_pretrained(
        llava_dir, attn_implementation="eager").eval()
    from PIL import Image

    batch = proc(images=Image.open(picture).convert("RGB"), text="<image>\nWhat is on the mat?",
                 return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    assert batch["input_ids"].shape[1] == len(run.tokens)
    for li, a in enumerate(out.attentions):
        assert np.abs(run.layer(li) - a[0].numpy()).max() <= 1e-6
    # the last text token's row over the patches is what the overlay draws
    grid, outside = plot_image.patch_map(run, 0, 0)
    row = run.head(0, 0)[-1]
    assert grid[2, 3] == pytest.approx(row[patches[2 * 4 + 3]])
    assert outside == pytest.approx(1.0 - row[patches].sum(), abs=1e-6)


def test_cli_render_image_overlay_grid_rollout_and_matrix(vit_dir, dinoreg_dir, picture,
                                                          tmp_path):
    from PIL import Image

    for extra, name in ((["--layer", "-1", "--head", "1"], "one.png"),
                        (["--head", "all"], "grid.png"),
                        (["--method", "rollout"], "rollout.png"),
                        (["--matrix"], "matrix.png"),
                        (["--query", "7", "--head", "mean"], "q.png")):
        out = tmp_path / name
        r = run_cli("render", picture, "--model", dinoreg_dir, *extra, "-o", out, "-q")
        assert r.returncode == 0, r.stderr
        with Image.open(out) as im:
            assert im.size[0] > 300
    run_file = tmp_path / "vit.safetensors"
    assert run_cli("capture", picture, "--model", vit_dir, "-o", run_file, "-q").returncode == 0
    r = run_cli("render", "--run", run_file, "--query", "3", "-o", tmp_path / "r.svg", "-q")
    assert r.returncode == 0, r.stderr


def test_cli_vlm_chat_prompt(llava_dir, picture, tmp_path):
    out = tmp_path / "vlm.png"
    r = run_cli("render", picture, "--chat", "What is on the mat?", "--model", llava_dir,
                "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1000


def _one_line_error(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("attnmap: error:")
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_are_one_line(vit_dir, llava_dir, gpt2_dir, picture, tmp_path,
                                 monkeypatch):
    out = tmp_path / "x.png"

    def cli(*args):
        return run_cli(*args, "-q")

    _one_line_error(cli("render", "a cat on a mat", "--model", vit_dir, "-o", out),
                    "vision model", "give it an image file")
    _one_line_error(cli("render", picture, "--model", gpt2_dir, "-o", out),
                    "reads text, not images")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _one_line_error(cli("render", broken, "--model", vit_dir, "-o", out), "cannot read")
    notimg = tmp_path / "notes.jpg"
    notimg.write_text("hello")
    _one_line_error(cli("render", notimg, "--model", vit_dir, "-o", out),
                    "not a PNG, JPEG or WebP")
    _one_line_error(cli("render", tmp_path / "missing.webp", "--model", vit_dir, "-o", out),
                    "does not exist")
    import attnmap.vision

    monkeypatch.setattr(attnmap.vision, "MAX_PIXELS", 1000)
    _one_line_error(cli("render", picture, "--model", vit_dir, "-o", out),
                    "64×40 pixels", "scale it down")
    monkeypatch.undo()
    _one_line_error(cli("render", picture, "--model", llava_dir, "-o", out),
                    "give one with --chat")
    _one_line_error(cli("render", picture, "--model", vit_dir, "--chat", "hi", "-o", out),
                    "leave out --chat")
    _one_line_error(cli("render", picture, "--model", vit_dir, "--words", "-o", out),
                    "leave --words out")
    _one_line_error(cli("render", picture, "--model", vit_dir, "--query", "99", "-o", out),
                    "query must be a token position")
    _one_line_error(cli("render", "text", "--model", gpt2_dir, "--query", "1", "-o", out),
                    "runs of an image")


def test_loaded_model_is_reused(vit_dir):
    assert load_vision(vit_dir) is load_vision(vit_dir)


def test_cli_heads_of_an_image_has_the_vision_census(dinoreg_dir, picture):
    import json

    r = run_cli("heads", picture, "--model", dinoreg_dir, "--json", "-q")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    assert len(entries) == 4
    for e in entries:
        v = e["vision"]
        assert 0 <= v["register_mass"] <= v["sink_mass"] <= 1
        assert 0 <= v["cls_focus"] <= 1 and 0 < v["distance_px"] < np.hypot(W, H)
    table = run_cli("heads", picture, "--model", dinoreg_dir, "-q")
    assert table.returncode == 0 and "vision heads" in table.stdout


@pytest.mark.parametrize("family,first", [
    ("deit", ["cls", "distillation", "patch"]),  # CLS and the distillation token
    ("clip", ["cls", "patch", "patch"]),  # CLIP's vision tower
    ("siglip", ["patch", "patch", "patch"]),  # SigLIP has no CLS: the mean of patch rows
])
def test_other_vision_families(family, first, picture, tmp_path):
    import torch
    import transformers as tf

    kw = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8)
    model, proc = {
        "deit": lambda: (tf.DeiTModel(tf.DeiTConfig(**kw)), tf.DeiTImageProcessor(
            size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})),
        "clip": lambda: (tf.CLIPVisionModel(tf.CLIPVisionConfig(**kw)), tf.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
        "siglip": lambda: (tf.SiglipVisionModel(tf.SiglipVisionConfig(**kw)),
                           tf.SiglipImageProcessor(size={"height": 32, "width": 32})),
    }[family]()
    model.save_pretrained(tmp_path / family)
    proc.save_pretrained(tmp_path / family)
    run = capture_image(picture, tmp_path / family)
    assert [t.kind for t in run.tokens[:3]] == first
    assert len(patch_indices(run.tokens)) == 16
    from PIL import Image

    eager = type(model).from_pretrained(tmp_path / family, attn_implementation="eager").eval()
    pixels = proc(images=Image.open(picture).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = eager(pixel_values=pixels, output_attentions=True).attentions
    assert np.abs(run.layer(0) - ref[0][0].numpy()).max() <= 1e-6
    if family == "siglip":
        grid, outside = plot_image.patch_map(run, 0, 0)  # no CLS: the mean over patch rows
        assert outside == pytest.approx(0.0, abs=1e-6)
        assert np.nansum(grid) == pytest.approx(1.0, abs=1e-5)


def test_cli_html_of_an_image(vit_dir, picture, tmp_path):
    out = tmp_path / "vit.html"
    r = run_cli("html", picture, "--model", vit_dir, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    from .test_html_cli import payload_of

    image = payload_of(out.read_text("utf-8"))["header"]["image"]
    run = capture_image(picture, vit_dir)
    assert image["png"] == base64.b64encode(run.extra["image_png"].tobytes()).decode()
    assert image["grid"] == [4, 4] and image["query"] == 0
    assert image["patches"][1] == [0, 0, *run.tokens[1].box]
