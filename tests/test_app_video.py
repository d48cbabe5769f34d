"""Issue 19 item 1: Wan's videos in the app. A tiny random Wan pipeline, saved to a folder and registered as a known
model with a model card (16 x 16 px, 5 frames), goes through every tab's handler as the server runs them: the frames
show as animated images (baseline, FORA, difference), with the same metrics and maps as an image model."""

import numpy as np
import pipelines
import pytest
from PIL import Image
from test_app import run_generate, shown

from analysis.report_files import VIDEO_FPS
from fora import full_steps
from fora.loading import MODELS, ModelSpec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

KEY = "tiny-wan"
CARD = {"height": 16, "width": 16, "num_frames": 5}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny-wan"))
    pipelines.build("wan").save_pretrained(folder)
    spec = ModelSpec(KEY, folder, "text", 4, 5.0, "tiny Wan", "WanPipeline", "video", call_kwargs=CARD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(MODELS, KEY, spec)  # a model of the list: its folder is its source, as the embedded models'
        mp.setenv("FORA_MAX_LOADED_MODELS", "4")
        import app  # noqa: F401  (the server's settings: one torch thread)
        from ui.layout import build_layout

        yield build_layout()


def clip(path) -> list[np.ndarray]:
    """The frames of an animated image the page shows, one per video frame at 16 fps (the encoder stores a run of
    identical frames once, shown for the run's time: they are repeated here)."""
    assert isinstance(path, str) and path.endswith(".webp"), path
    frames = []
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            im.load()  # the frame's duration is read with its data
            repeats, rest = divmod(im.info["duration"], round(1000 / VIDEO_FPS))
            assert repeats >= 1 and rest == 0, im.info["duration"]
            frames += [np.asarray(im.convert("RGB"))] * repeats
    return frames


def generate(layout, **kw):
    return run_generate(layout, model=KEY, label=None, prompt="a red fox running", steps=4, interval=2, **kw)


def generate_stream(layout, **kw):
    """The Compare handler's updates as they come (`generate` collects them all)."""
    from test_app import generate_args

    return layout.compare.generate(
        **generate_args(model=KEY, label=None, prompt="a red fox running", steps=4, interval=2, **kw)
    )


def test_choosing_a_video_model_shows_its_frames_slider_and_hides_the_class_examples(layout):
    s = layout.settings
    change = s.on_model_change(KEY, "attn")
    assert change[s.frames]["visible"] and change[s.frames]["value"] == 5  # the card's, below the app's 17
    assert not change[s.class_examples]["visible"] and change[s.prompt]["visible"]
    image_model = s.on_model_change("emoji-mmdit", "attn")
    assert not image_model[s.frames]["visible"] and not image_model[s.class_examples]["visible"]
    assert s.on_model_change("emoji-dit", "attn")[s.class_examples]["visible"]


def test_compare_shows_the_frames_as_animated_images_with_metrics_and_maps(layout):
    c = layout.compare
    final = shown(generate(layout, frames=9))
    assert final[c.status].startswith("done: N=2")
    base, cached, diff = (clip(final[k]) for k in (c.base_img, c.fora_img, c.diff_img))
    assert len(base) == len(cached) == len(diff) == 9  # the slider's 9 frames, not the card's 5
    assert base[0].shape == (256, 256, 3)  # 16 px enlarged for the page, as images are
    assert any(not np.array_equal(a, b) for a, b in zip(base, base[1:]))  # frames, not one image repeated
    table = dict(final[c.metrics])
    full = len(full_steps(4, 2))
    assert table["full / reuse steps"] == f"{full} / {4 - full}"
    psnr = float(table["PSNR vs baseline"].split()[0])
    assert 0 < psnr < float("inf") and 0 < float(table["SSIM vs baseline"].split()[0]) <= 1  # cached: not identical
    worst = table["worst frame (lowest PSNR)"]  # the frame the clip's means hide
    assert worst.startswith("frame ") and " of 9: " in worst and float(worst.split(": ")[1].split()[0]) <= psnr
    # the error per step: one point per denoising step, both guidance halves' outputs taken together
    assert len(final[c.err].data[0].x) == 4 and len(final[c.err].data[0].y) == 4
    for figure in (final[c.heat_attn], final[c.heat_mlp]):
        assert figure.data and all(np.isfinite(np.asarray(t.z, dtype=float)).any() for t in figure.data)
    # the frame slider: one frame in all three boxes, the same frame of each clip; 0 plays the clips again
    import gradio as gr

    from ui import store

    assert final[c.frame]["visible"] and final[c.frame]["maximum"] == 9 and final[c.frame]["value"] == 0
    kept = store.RESULTS.get(final[c.last])
    still = c.redraw_frame(final[c.last], 3)
    for box, kept_clip in zip((c.base_img, c.fora_img, c.diff_img), kept.clips):
        assert still[box].shape == (256, 256, 3)
        assert np.array_equal(still[box][::16, ::16], kept_clip[2])  # frame 3, enlarged 16x without smoothing
    assert not np.array_equal(still[c.base_img], c.redraw_frame(final[c.last], 4)[c.base_img])
    assert all(len(clip(p)) == 9 for p in c.redraw_frame(final[c.last], 0).values())
    with pytest.raises(gr.Error, match=r"frame=10 out of range: allowed integers 0\.\.9"):
        c.redraw_frame(final[c.last], 10)
    # a new run first ends the last result's redraws: moving the slider during it would put the old frames over
    # the new baseline
    outs = generate(layout, frames=9)
    assert outs[0][c.last] is None and not outs[0][c.frame]["visible"] and outs[0][c.frame]["value"] == 0
    assert outs[0][c.fora_img] is None and len(clip(outs[0][c.base_img])) == 9  # the cached baseline, shown at once
    again = shown(outs)  # the same request: the baseline comes from the server's store
    assert dict(again[c.metrics])["baseline run"] == "cached from an earlier request"
    assert dict(again[c.metrics])["PSNR vs baseline"] == table["PSNR vs baseline"]


def test_a_redraw_sent_with_the_old_token_skips_while_a_new_run_goes(layout):
    """A frame-slider move (or map redraw) sent just before Generate carries the last run's token: once the new run
    has cleared the page, it redraws nothing, so no old frame lands on the new baseline; the new run's token does."""
    import gradio as gr

    from ui.tabs import compare as compare_tab

    c, me = layout.compare, gr.Request(session_hash="page-1")
    old = shown(generate(layout, frames=5, seed=21, request=me))[c.last]
    assert c.redraw_frame(old, 2, me) != gr.skip()  # the page's own result: redrawn
    run = iter(generate_stream(layout, frames=5, seed=22, request=me))
    try:  # the paused run holds the model lock: closed whatever fails here
        assert next(run)[c.last] is None  # the new run has cleared the page
        assert c.redraw_frame(old, 2, me) == gr.skip() and c.redraw_heatmaps(old, "FORA run", me) == gr.skip()
        assert compare_tab.redraw_pairwise(old, "0", "attn", KEY, me) == gr.skip()
        new = shown(list(run))[c.last]
    finally:
        run.close()
    assert new != old and c.redraw_frame(new, 2, me) != gr.skip() and c.redraw_frame(old, 2, me) == gr.skip()
    assert c.redraw_frame(old, 2, gr.Request(session_hash="page-2")) != gr.skip()  # a session not seen: no guard


def test_a_result_too_big_to_keep_is_shown_and_says_it_is_not_redrawn(layout, monkeypatch):
    """A result over the store's share for one run (an 81-frame video's on a real server) is shown, not kept: no
    token, no frame slider, and the status says why, instead of pushing out every other user's results."""
    from ui import store

    c = layout.compare
    monkeypatch.setattr(store, "RESULTS", store.BoundedCache(size=16, max_bytes=2048))  # 1 KiB for one run
    final = shown(generate(layout, frames=9, seed=5))
    assert final[c.last] is None and not final[c.frame]["visible"] and len(store.RESULTS) == 0
    assert (
        "are more than the server keeps of one run, 1.0 KiB: the plots and frames are not redrawn" in final[c.status]
    )
    assert len(clip(final[c.base_img])) == 9 and final[c.status].startswith("done: N=2")


def test_frames_are_checked_before_anything_runs(layout):
    import gradio as gr

    from ui import registry

    pipe, _ = registry.get_model(KEY)
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for frames, closest in ((6, 5), (8, 9), (3, 5), (80, 81)):
            with pytest.raises(
                gr.Error, match=rf"frames={frames}: a video here has 4k \+ 1 frames .* {closest} is closest"
            ):
                generate(layout, frames=frames)
        with pytest.raises(gr.Error, match=r"frames=85 out of range: allowed integers 1\.\.81"):
            generate(layout, frames=85)
        with pytest.raises(gr.Error, match=r"frames='many' is not a number"):
            generate(layout, frames="many")
    finally:
        hook.remove()
    assert not calls  # refused before the model ran


def test_sweep_and_policies_show_animated_images(layout):
    outs = list(layout.sweep.sweep(KEY, None, "a red fox running", 4, 0, 5.0, ["1", "2"], 1, frames=5))
    final = shown(outs)
    assert final[layout.sweep.status].startswith("done")
    gallery = final[layout.sweep.gallery]
    assert [caption for _, caption in gallery] == ["N=1", "N=2"]
    assert all(len(clip(path)) == 5 for path, _ in gallery)

    # FORA, a plan calibrated on the model's calibration prompts (its samples are clips too) and cache-dit's DBCache
    # with the guidance halves cached apart, at N = 2's cost
    chosen = ["FORA", "calibrated", "DBCache"]
    outs = list(layout.policies.policies(KEY, None, "a red fox running", 6, 0, 5.0, chosen, 2, 5))
    final = shown(outs)
    rows = final[layout.policies.table]
    assert [r[0].split()[0] for r in rows] == ["fora", "calibrated", "dbcache"]
    gallery = final[layout.policies.gallery]
    assert [c.split(":")[0] for _, c in gallery] == ["uncached", *[r[0] for r in rows]]
    assert all(len(clip(path)) == 5 for path, _ in gallery)


def test_a_clip_is_compared_over_all_its_frames():
    """PSNR and the mean difference over every pixel of the clip; SSIM the mean of its frames' (no 3-D window); the
    worst frame, which those means hide, by number (1-based, as the frame slider counts)."""
    from analysis.metrics.quality import compare_images, psnr, ssim

    rng = np.random.default_rng(0)
    a = rng.random((5, 16, 16, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape) * np.arange(1, 6)[:, None, None, None], 0, 1)  # worse each frame
    frames = [ssim(x, y) for x, y in zip(a, b)]
    assert ssim(a, b) == pytest.approx(np.mean(frames)) and frames[0] > frames[-1]
    mse = np.mean((a - b) ** 2)
    assert compare_images(b, a)["psnr"] == pytest.approx(10 * np.log10(1 / mse))
    assert psnr(b, a) < psnr(b[0], a[0])
    worst = compare_images(b, a)["worst_frame"]
    assert worst["frame"] == worst["min_ssim_frame"] == 5 and worst["frames"] == 5  # the noisiest frame, the last
    assert worst["psnr"] == pytest.approx(psnr(b[4], a[4])) and worst["ssim"] == pytest.approx(frames[4])
    swapped = compare_images(b[::-1], a[::-1])["worst_frame"]
    assert swapped["frame"] == 1 and swapped["psnr"] == pytest.approx(worst["psnr"])
    assert "worst_frame" not in compare_images(b[0], a[0])  # an image has no frames


@pytest.mark.parametrize(
    "family, count", [("wan", 2), ("lumina2", 4), ("hunyuan-dit", 4), ("qwen-image", 2), ("flux2", 3)]
)
def test_the_form_counts_every_familys_blocks(family, count):
    """The form counted `transformer.transformer_blocks`, which Wan, HunyuanDiT ("blocks") and Lumina 2 ("layers")
    lack: choosing one in the app failed. It counts the blocks FORA numbers (`fora.apply.find_blocks`)."""
    from types import SimpleNamespace

    import families

    from ui import form

    model = families.FAMILIES[family][0]()[0]
    pipe = SimpleNamespace(transformer=model)  # the form reads only the transformer here
    blocks, kinds = form.recorded_view(pipe)
    assert form.num_blocks(pipe) == count and blocks[-1] == count - 1 and "attn" in kinds  # the tiny model's blocks
    assert form.parse_config(2, 6, form.num_blocks(pipe), blocks=str(count - 1)).blocks == (count - 1,)
    with pytest.raises(ValueError, match=rf"blocks=\[{count}\] out of range: allowed 0\.\.{count - 1}"):
        form.parse_config(2, 6, form.num_blocks(pipe), blocks=str(count))


@pytest.fixture(scope="module")
def server(layout):
    from test_app import served

    with served(layout.demo) as address:
        yield address


def test_a_video_model_in_the_headless_browser(server, tmp_path):
    """The tiny Wan in the Compare tab of a real browser: choosing it shows the frames slider; Generate shows the
    baseline and FORA as animated WebP files of the slider's frames, served by the page, and the metrics; the frame
    slider shows one frame of each as stills."""
    import os

    from test_app import ARTIFACTS, _chromium, page_with_model

    if _chromium() is None and not os.environ.get("CI"):
        pytest.skip("Debian chromium not installed")
    with page_with_model(server, KEY) as page:
        frames = page.locator("input[type=number][aria-label='number input for frames (video models; 4k + 1)']")
        frames.wait_for(state="visible", timeout=60_000)
        assert frames.input_value() == "5"
        frames.fill("9")
        frames.press("Tab")
        page.get_by_label("prompt", exact=True).fill("a red fox running")
        steps = page.locator("input[type=number][aria-label='number input for steps T']")
        steps.fill("4")
        steps.press("Tab")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("document.body.innerText.includes('done: N=3')", timeout=180_000)
        assert "PSNR vs baseline" in page.inner_text("body")
        for box in ("#baseline", "#fora", "#diff"):
            src = page.locator(f"{box} img").first.get_attribute("src")
            assert src and src.endswith(".webp"), src
            path = tmp_path / f"{box[1:]}.webp"
            path.write_bytes(page.request.get(src).body())  # what the browser was served
            assert len(clip(str(path))) == 9
        # one frame in all three boxes: stills, the same frame of each clip
        frame = page.locator("input[type=number][aria-label='number input for frame (0 = play)']")
        frame.wait_for(state="visible", timeout=30_000)
        frame.fill("3")
        frame.press("Tab")
        page.wait_for_function(
            "!document.querySelector('#fora img').getAttribute('src').endsWith('.webp')", timeout=60_000
        )
        for box in ("#baseline", "#fora", "#diff"):
            src = page.locator(f"{box} img").first.get_attribute("src")
            assert src and src.endswith(".png"), src
        page.screenshot(path=os.path.join(ARTIFACTS, "video.png"), full_page=True)
        assert "Traceback" not in page.inner_text("body")
