"""Probe the real server the way users can: `python -m benchmarks.probe_server [--requests 200]`.

Starts `python app.py` in its own process (the embedded model, and the same weights added a second time by the
operator through FORA_EXTRA_MODELS, so that there are two models to switch between), then, with two users in
Debian's headless Chromium and more through gradio_client:

1. a user switches the model while a run is going: the run finishes with its own images, the page follows the
   switch, no error;
2. two users redraw their own step x step maps while the other generates: each gets their own run's map;
3. a bad block choice through the API is refused at once (before any step runs), and the message is escaped;
4. a burst of 40 requests at once: each either completes or is refused with "queue full", and the server answers
   afterwards;
5. the server's resident memory over `--requests` small requests (after 20 to warm up): printed every 50.

Prints one line per check, PASS or FAIL with what it saw, and exits non-zero on any FAIL. Its results are in
docs/benchmarks.md. Nothing here is timed for speed: the run times printed only say how long each part took.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
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
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
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
        a.get_by_role("option", name=EMOJI.rsplit("/", 1)[-1], exact=False).first.click()
        a.wait_for_function("document.body.innerText.includes('done: N=')", timeout=300_000)
        text = a.inner_text("body")
        check(
            "switch the model during a run",
            "Error" not in text and "done: N=" in text and a.locator("#fora img").count() == 1,
            f"status {text.split('done: ', 1)[1][:40]!r}, error shown: {'Error' in text}",
        )

        # 2. two users, each redrawing their own run while the other generates
        for page, seed in ((a, 11), (b, 22)):
            set_number(page, "steps T", 8)
            page.get_by_label("seed", exact=True).fill(str(seed))
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function(f"document.body.innerText.includes('seed {seed}, ')", timeout=120_000)
            page.wait_for_function("document.body.innerText.includes('done: N=')", timeout=120_000)
        b.get_by_label("seed", exact=True).fill("33")
        b.get_by_role("button", name="Generate").click()  # b generates while a redraws
        titles = []
        for page in (a, b):
            page.get_by_label("block for step x step").click()
            page.get_by_role("option", name="0", exact=True).click()
            page.wait_for_function("document.body.innerText.includes('layer 0')", timeout=60_000)
            titles.append("generate again" not in page.inner_text("body"))
        check("two users redraw their own maps", all(titles), f"redrawn without error: {titles}")
        browser.close()


def api_checks(url: str, requests: int, server: psutil.Process) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    # 3. a bad block choice: refused before any step runs
    t0 = time.perf_counter()
    try:
        client.predict(*generate_args(steps=100, block_choice="99"), api_name="/generate")
        check("bad block choice refused", False, "accepted")
    except Exception as e:  # noqa: BLE001 - the message is what is checked
        seconds = time.perf_counter() - t0
        check(
            "bad block choice refused first",
            seconds < 10 and "99" in str(e),
            f"after {seconds:.1f} s (a run of 100 steps x 10 calls takes far longer): {str(e)[:120]!r}",
        )

    # 4. a burst of 40 requests at once
    def one(seed):
        try:
            Client(url, verbose=False).predict(*generate_args(steps=4, seed=seed), api_name="/generate")
            return "done"
        except Exception as e:  # noqa: BLE001
            return "queue full" if "queue" in str(e).lower() else f"error: {str(e)[:80]}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(one, range(1000, 1040)))
    counts = {k: outcomes.count(k) for k in set(outcomes)}
    after = one(2000)
    check(
        "a burst of 40 requests",
        set(counts) <= {"done", "queue full"} and after == "done",
        f"{counts} in {time.perf_counter() - t0:.0f} s; a request afterwards: {after}",
    )

    # 5. memory over many requests (a new seed each: a baseline and a comparison kept each time)
    rss = []
    for i in range(20 + requests):
        client.predict(*generate_args(steps=4, seed=5000 + i), api_name="/generate")
        if i >= 19 and (i - 19) % 50 == 0:
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
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        log = out.decode(errors="replace")
        print(f"server log: {log.count('Traceback')} tracebacks")
        if "Traceback" in log:
            print("  the first:", log[log.index("Traceback") :][:1500].replace("\n", "\n  "))
    print(f"{len(FAILS)} failed" + (f": {', '.join(FAILS)}" if FAILS else ""))
    return 1 if FAILS else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests for the memory check (after 20)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    sys.exit(main(parser.parse_args()))
