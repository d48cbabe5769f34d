"""Probe the real server the way users can: `python -m benchmarks.probe_server [--requests 200]`.

Starts `python app.py` in its own process (the embedded model, and the same weights added a second time by the
operator through FORA_EXTRA_MODELS, so that there are two models to switch between), then, with two users in
Debian's headless Chromium and more through gradio_client:

1. a user switches the model while a run is going: the run finishes with its own images, the page follows the
   switch, no error;
2. two users redraw their own step x step maps after the other generated: each gets their own last run's map (the
   maps each page shows are compared with the same runs', computed here);
3. a bad blocks list through the API is refused at once (before any step runs), and markup in it is escaped;
4. a burst of 40 requests at once: each either completes or is refused with "queue full" (both happen: 16 wait,
   one runs), and the server answers afterwards;
5. the server's resident memory over `--requests` small requests (after 20 to warm up), sampled four times.

Prints one line per check, PASS or FAIL with what it saw, and exits non-zero on any FAIL. Its results are in
docs/benchmarks.md. Nothing here is timed for speed: the run times printed only say how long each part took.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOJI = os.path.join(ROOT, "assets", "emoji-dit")
FAILS: list[str] = []


def check(name: str, ok: bool, seen: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {seen}", flush=True)
    if not ok:
        FAILS.append(name)


def generate_args(model="emoji-dit", steps=8, interval=3, seed=0, block_choice="5", label="cat"):
    return [model, label, "", steps, interval, seed, 3.0, True, True, True, 0, 0, "", block_choice]


def start_server(port: int, queue_size: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        GRADIO_SERVER_PORT=str(port),
        FORA_EXTRA_MODELS=EMOJI,
        FORA_QUEUE_SIZE=str(queue_size),
        HF_HUB_OFFLINE="1",
    )
    log = tempfile.NamedTemporaryFile("w+b", prefix="probe-server-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start in 180 s")


def browser_checks(url: str, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        a, b = (browser.new_context(viewport={"width": 1500, "height": 1700}).new_page() for _ in range(2))
        for page in (a, b):
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("button", name="Generate").wait_for(timeout=60_000)

        def set_number(page, label, value):
            box = page.locator(f"input[type=number][aria-label='number input for {label}']")
            box.fill(str(value))
            box.press("Enter")

        # 1. switch the model while a run is going
        set_number(a, "steps T", 60)
        a.get_by_role("button", name="Generate").click()
        a.wait_for_function("document.body.innerText.includes('running the baseline')", timeout=60_000)
        a.get_by_label("model").click()
        a.get_by_role("option", name="added by the operator", exact=False).click()  # the second model
        a.wait_for_function("document.body.innerText.includes('done: N=')", timeout=300_000)
        text, chosen = a.inner_text("body"), a.get_by_label("model").input_value()
        check(
            "switch the model during a run",
            "Error" not in text and "done: N=3, seed 0, 21 full steps of 60" in text and "operator" in chosen,
            f"status {text.split('done: ', 1)[1][:40]!r}, model now {chosen[-40:]!r}, error shown: {'Error' in text}",
        )
        a.get_by_label("model").click()
        a.get_by_role("option", name="emoji-dit: ", exact=False).click()  # back, for the next checks

        # 2. two users, each redrawing their own run while the other generates
        for page, seed in ((a, 11), (b, 22)):
            set_number(page, "steps T", 8)
            page.get_by_label("seed", exact=True).fill(str(seed))
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function(f"document.body.innerText.includes('seed {seed}, ')", timeout=120_000)
            page.wait_for_function("document.body.innerText.includes('done: N=')", timeout=120_000)
        b.get_by_label("seed", exact=True).fill("33")
        b.get_by_role("button", name="Generate").click()  # b's newer run, after a's
        b.wait_for_function("document.body.innerText.includes('seed 33, ')", timeout=120_000)
        b.wait_for_function("document.body.innerText.includes('done: N=3, seed 33')", timeout=120_000)
        errors = []
        for page, seed, others in ((a, 11, 33), (b, 33, 11)):  # each page's last run, and the other's
            page.get_by_label("block for step x step").click()
            page.get_by_role("option", name="0", exact=True).click()
            page.wait_for_function("document.body.innerText.includes('layer 0')", timeout=60_000)
            z = page.evaluate("document.querySelector('#pairwise .js-plotly-plot').data[0].z")
            own, other = expected_pairwise(seed), expected_pairwise(others)
            errors.append((max_gap(z, own), max_gap(z, other)))
        check(
            "two users redraw their own maps",
            all(mine < 1e-3 < theirs for mine, theirs in errors),
            "largest |difference| of each page's step x step map (layer 0) from its own run's and another's: "
            + ", ".join(f"{m:.1e} / {t:.1e}" for m, t in errors),
        )
        browser.close()


def expected_pairwise(seed: int):
    """Layer 0's self-attention step x step map of an uncached 8-step run at `seed`, computed here."""
    from analysis.comparison import observe_run
    from fora import ForaConfig
    from fora.generate import Request
    from fora.loading import load_pipeline

    pipe = load_pipeline("emoji-dit", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    run = observe_run(pipe, Request(label="cat", steps=8, seed=seed, guidance=3.0), ForaConfig(interval=1))
    return run.similarity.pairwise(0, "attn")


def max_gap(z, want) -> float:
    """Largest difference between a page's heatmap `z` (plotly's binary form: dtype, base64 bytes, shape) and
    `want`, over the cells both hold."""
    import base64

    import numpy as np

    shape = [int(n) for n in str(z.get("shape", len(want))).replace(" ", "").split(",")]
    got = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"])).reshape(shape)
    return float(np.nanmax(np.abs(got.astype(float) - want)))


def api_checks(url: str, requests: int, server: psutil.Process) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    # 3. a bad block choice: refused before any step runs
    for blocks, want in (("0,99", "blocks=[99] out of range"), ("<b>1</b>", "&lt;b>1&lt;/b>")):
        args = generate_args(steps=100)
        args[12] = blocks  # the Advanced blocks box, which the app checks itself
        t0 = time.perf_counter()
        try:
            client.predict(*args, api_name="/generate")
            check(f"bad blocks {blocks!r} refused", False, "accepted")
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            seconds = time.perf_counter() - t0
            check(
                f"bad blocks {blocks!r} refused before the run",
                seconds < 10 and want in str(e),
                f"after {seconds:.1f} s (the run asked for, 100 steps x 10 calls, takes minutes): {str(e)[:120]!r}",
            )

    # 4. a burst of 40 requests at once
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    def one(seed):
        try:
            Client(url, verbose=False).predict(*generate_args(steps=4, seed=seed), api_name="/generate")
            return "done"
        except QueueError:
            return "queue full"
        except (AppError, Exception) as e:  # noqa: BLE001
            return f"error: {type(e).__name__}: {str(e)[:80]}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(one, range(1000, 1040)))
    counts = {k: outcomes.count(k) for k in set(outcomes)}
    after = one(2000)
    check(
        "a burst of 40 requests",
        set(counts) == {"done", "queue full"} and counts["done"] >= 17 and after == "done",
        f"{counts} in {time.perf_counter() - t0:.0f} s; a request afterwards: {after}",
    )

    # 5. memory over many requests (a new seed each: a baseline and a comparison kept each time)
    rss, every = [], max(1, requests // 4)
    for i in range(20 + requests):
        client.predict(*generate_args(steps=4, seed=5000 + i), api_name="/generate")
        if i >= 19 and (i - 19) % every == 0:
            rss.append(server.memory_info().rss / 2**20)
            print(f"  after {i + 1} requests: {rss[-1]:.0f} MiB resident", flush=True)
    growth = rss[-1] - rss[0]
    check(
        f"memory flat over {requests} requests",
        growth < 0.1 * rss[0],
        f"{rss[0]:.0f} MiB after 20, {rss[-1]:.0f} MiB after {20 + requests}: {growth:+.0f} MiB",
    )


def main(args) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(port, queue_size=16)
    url = f"http://127.0.0.1:{port}/"
    try:
        server = psutil.Process(proc.pid)
        if args.chromium:
            browser_checks(url, args.chromium)
        else:
            print("SKIP the browser checks: no chromium found")
        api_checks(url, args.requests, server)
        check("the server is still up", proc.poll() is None, f"exit code {proc.poll()}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with open(proc.log_path, errors="replace") as f:
            log = f.read()
        os.remove(proc.log_path)
        print(f"server log: {log.count('Traceback')} tracebacks")
        for block in log.split("Traceback (most recent call last):")[1:]:  # each one's exception line
            last = [line for line in block.splitlines() if line and not line.startswith(" ")][:1]
            print("  ", last[0][:200] if last else "(no exception line)")
    print(f"{len(FAILS)} failed" + (f": {', '.join(FAILS)}" if FAILS else ""))
    return 1 if FAILS else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests for the memory check (after 20)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    sys.exit(main(parser.parse_args()))
