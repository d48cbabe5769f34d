"""The app: its functions on the embedded model and a tiny random model, the real server through gradio_client,
and the page in a real headless browser."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_dit_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.environ.get("CI_ARTIFACTS", os.path.join(ROOT, "artifacts"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-dit")
    make_dit_pipeline().save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    index["id2label"] = {"1": "goldfish", "2": "great white shark"}
    (path / "model_index.json").write_text(json.dumps(index))
    return str(path)


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    os.environ["FORA_EXTRA_MODELS"] = tiny_model_dir
    import app as app_module

    return app_module


def run_generate(app, model="emoji-dit", label="cat", steps=12, interval=3, seed=0, **kw):
    args = dict(model_key=model, label=label, prompt="", steps=steps, interval=interval, seed=seed, guidance=3.0,
                cache_attn=True, cache_cross_attn=True, cache_mlp=True, cache_start=0, cache_end=0, blocks="",
                block_choice="")  # fmt: skip
    args.update(kw)
    return list(app.generate(**args))


def test_generate_on_embedded_model(app):
    from analysis import live

    outs = run_generate(app, steps=12, interval=3, seed=7)
    base, fora, diff, metrics, heat_attn, heat_mlp, pairwise, strip, err, status, token = outs[-1]
    assert base.shape == fora.shape == diff.shape and base.shape[0] >= 256
    table = dict(metrics)
    assert table["full / reuse steps"] == "5 / 7" and "dB" in table["PSNR vs baseline"]
    assert heat_attn.to_dict()["data"][0]["z"] is not None and "done" in status
    # the plots redraw from the server-side result the session's token names
    assert app.redraw_pairwise(token, "0", "mlp").to_dict()["data"]
    base_attn, _ = app.redraw_heatmaps(token, "uncached baseline")
    assert not np.isnan(np.asarray(base_attn.data[0].z, dtype=float)[:, 1:]).any()
    import gradio as gr

    with pytest.raises(gr.Error, match="generate first"):
        app.redraw_pairwise("no-such-token", "0", "mlp")
    # only the interval changes: the baseline comes from the cache, with the very same image
    hits = live.BASELINES.hits
    outs2 = run_generate(app, steps=12, interval=2, seed=7)
    assert live.BASELINES.hits == hits + 1
    assert np.array_equal(outs2[-1][0], base) and "(cached baseline)" in dict(outs2[-1][3])["baseline time (whole call)"]
    # interval 1 reproduces the baseline exactly
    same = run_generate(app, steps=12, interval=1, seed=7)[-1]
    assert np.array_equal(same[1], base) and dict(same[3])["PSNR vs baseline"] == "inf (identical)"


def test_generate_on_tiny_random_model(app, tiny_model_dir):
    outs = run_generate(app, model=tiny_model_dir, label="goldfish", steps=8, interval=2)
    assert dict(outs[-1][3])["full / reuse steps"] == "5 / 3"


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"interval": 12}, "interval=12 out of range: allowed integers 1..11"),
        ({"steps": 1}, "steps=1 out of range: allowed integers 2..250"),
        ({"steps": 1000}, "steps=1000 out of range"),
        ({"label": "zebra"}, "unknown class 'zebra'"),
        ({"seed": -5}, "seed=-5 out of range"),
        ({"seed": 2**40}, "seed=1099511627776 out of range"),
        ({"guidance": 50}, "guidance=50.0 out of range: allowed 1.0..20.0"),
        ({"model": "facebook/DiT-XL-2-256"}, "unknown model"),
        ({"model": "/etc"}, "unknown model '/etc'"),
        ({"model": "dit-xl-2-256"}, "unavailable here"),
        ({"blocks": "0,9"}, "blocks=[9] out of range: allowed 0..5"),
        ({"cache_start": 5, "cache_end": 3}, "cache_end=3"),
    ],
)
def test_bad_inputs_give_clear_errors(app, kw, message, monkeypatch):
    import gradio as gr

    monkeypatch.delenv("FORA_HUB_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(gr.Error) as err:
        run_generate(app, **kw)
    assert message in str(err.value.message)


def test_memory_and_sweep_functions(app):
    text = app.memory("pixart-alpha-1024", 1, "float16", 20, 2, 3.35, 989, 0.5)
    assert "1512.0 MiB" in text and "Is HBM fast enough? yes" in text
    plot, gallery, table, files = app.sweep("emoji-dit", "rocket", "", 10, 3.0, ["1", "3"], 1)
    assert [row[0] for row in table] == [1, 3] and len(gallery) == 2
    assert {os.path.basename(f) for f in files} == {"sweep.csv", "sweep.json", "report.html"}
    import gradio as gr

    with pytest.raises(gr.Error, match=r"intervals \[12\] out of range for 10 steps"):
        app.sweep("emoji-dit", "rocket", "", 10, 3.0, ["12"], 1)


def test_baseline_cache_is_bounded(app):
    from analysis import live

    for seed in range(100, 100 + live.BASELINES.size + 3):
        run_generate(app, steps=4, interval=2, seed=seed)
    assert len(live.BASELINES) == live.BASELINES.size
    assert len(live.RESULTS) <= live.RESULTS.size and live.RESULTS.nbytes <= live.RESULTS.max_bytes
    comparison = next(iter(live.RESULTS._items.values()))[0]
    assert live.result_bytes(comparison) > 0
    small = live.BoundedCache(size=100, max_bytes=1)  # the byte bound evicts all but the newest entry
    for i in range(3):
        small.put(i, comparison)
    assert len(small) == 1 and small.get(2) is comparison


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app):
    port = _free_port()
    app.demo.queue(max_size=16, default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


def test_server_with_gradio_client(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    args = dict(model_key="emoji-dit", label="fox", prompt="", steps=10, interval=3, seed=3, guidance=3.0,
                cache_attn=True, cache_cross_attn=True, cache_mlp=True, cache_start=0, cache_end=0, blocks="",
                block_choice="5")  # fmt: skip
    result = client.predict(*args.values(), api_name="/generate")
    assert os.path.exists(result[0]) and os.path.exists(result[1])
    assert "done: N=3" in result[9]
    with pytest.raises(Exception, match="interval=10 out of range"):
        client.predict(*{**args, "interval": 10}.values(), api_name="/generate")
    # two requests at once give what they give one after the other
    jobs = [client.submit(*{**args, "seed": s, "interval": n}.values(), api_name="/generate") for s, n in ((11, 2), (12, 4))]
    together = [job.result() for job in jobs]
    alone = [client.predict(*{**args, "seed": s, "interval": n}.values(), api_name="/generate") for s, n in ((11, 2), (12, 4))]
    from PIL import Image

    for a, b in zip(together, alone):
        assert np.array_equal(np.asarray(Image.open(a[1])), np.asarray(Image.open(b[1])))
        assert a[3] is not None and dict((r[0], r[1]) for r in a[3]["data"])["PSNR vs baseline"] == \
            dict((r[0], r[1]) for r in b[3]["data"])["PSNR vs baseline"]  # fmt: skip


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"), reason="Debian chromium not installed")
def test_in_headless_browser(server):
    from playwright.sync_api import sync_playwright

    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium() or "/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1500, "height": 1700})
        page.goto(server, wait_until="domcontentloaded")  # the page keeps a live connection: never network-idle
        number = page.locator("input[type=number][aria-label='number input for cache interval N (1 = uncached)']")
        number.wait_for(timeout=60_000)
        number.fill("5")
        number.press("Enter")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_selector("#baseline img", timeout=60_000)
        page.wait_for_selector("#fora img", timeout=60_000)
        page.wait_for_selector("#heat-attn .js-plotly-plot", timeout=60_000)
        page.wait_for_function("document.body.innerText.includes('done: N=5')", timeout=60_000)
        page.screenshot(path=os.path.join(ARTIFACTS, "app.png"), full_page=True)
        # a bad seed shows the error message in the page, not a stack trace
        seed = page.get_by_label("seed", exact=True)
        seed.fill("-3")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("document.body.innerText.includes('seed=-3 out of range')", timeout=60_000)
        assert "Traceback" not in page.inner_text("body")
        browser.close()
    assert os.path.getsize(os.path.join(ARTIFACTS, "app.png")) > 10_000


def test_import_loads_no_model():
    """`import app` builds the UI but loads no model: they load lazily on first use."""
    code = ("import app; from analysis import live; import fora.loading as L; "
            "assert not live._models, live._models; print('blocks', len(app.demo.blocks))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "blocks" in out.stdout
