"""The server's loaded models (ui/registry.py): a load holds up only its own model, a model loads once however many
requests ask for it at the same time, what stays loaded is bounded without unloading a model in use, the text
encoders of identical files are loaded once, and on ZeroGPU every model is loaded at start-up."""

import copy
import hashlib
import json
import os
import shutil
import threading
import time

import pytest
from conftest import make_dit_pipeline, make_pixart_pipeline, run_pixart

from fora.loading import ModelLoadError, load_pipeline
from ui import registry


@pytest.fixture
def fresh(monkeypatch):
    """The registry emptied for one test (the other tests' loaded models are put back afterwards)."""
    for name, value in [("_models", {}), ("_locks", {}), ("_loaders", {}), ("_failed", {})]:
        monkeypatch.setattr(registry, name, value)
    monkeypatch.setattr(registry, "_pinned", {registry.DEFAULT_MODEL})
    return registry


@pytest.fixture(scope="module")
def dit_dirs(tmp_path_factory):
    """Three tiny DiT pipeline folders (different weights)."""
    dirs = []
    for seed in range(3):
        path = tmp_path_factory.mktemp(f"dit{seed}")
        make_dit_pipeline(num_layers=1, seed=seed).save_pretrained(path)
        dirs.append(str(path))
    return dirs


_STALLED_HUB = r"""
import os, socket, sys, threading, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
held = []
threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(8)], daemon=True).start()
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{server.getsockname()[1]}", HF_HUB_OFFLINE="0",
                  HF_HUB_ETAG_TIMEOUT="120", HF_HUB_DOWNLOAD_TIMEOUT="120", FORA_EXTRA_MODELS="org/stalled")
sys.path.insert(0, os.getcwd())
from ui import registry
threading.Thread(target=lambda: registry.get_model("org/stalled"), daemon=True).start()
deadline = time.monotonic() + 30
while not held and time.monotonic() < deadline:
    time.sleep(0.05)
print("download stalled:", bool(held), flush=True)
t0 = time.monotonic()
registry.get_model("emoji-dit")
print(f"embedded model loaded after {time.monotonic() - t0:.1f} s, stalled one loaded: "
      f"{'org/stalled' in registry._models}", flush=True)
os._exit(0)
"""


def test_a_stalled_download_holds_up_only_its_own_model():
    """A hub model whose download stalls (a hub endpoint that accepts and never answers) holds up the requests for
    it and no other: the embedded model loads meanwhile. Run in its own process: the hub's address is read at
    import, and the stalled thread is left behind."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _STALLED_HUB], cwd=root, capture_output=True, text=True, timeout=100)
    assert "download stalled: True" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "stalled one loaded: False" in out.stdout, out.stdout + out.stderr[-3000:]
    seconds = float(out.stdout.split("loaded after ")[1].split(" s")[0])
    assert seconds < 60  # the stalled download waits 120 s before it fails


def test_one_load_per_model_however_many_ask(fresh, dit_dirs, monkeypatch):
    monkeypatch.setenv("FORA_EXTRA_MODELS", dit_dirs[0])
    got, start = [], threading.Barrier(3)

    def ask():
        start.wait()
        got.append(fresh.get_model(dit_dirs[0])[0])

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 3 and all(p is fresh.loaded(dit_dirs[0]) for p in got)


def test_loaded_models_are_bounded_but_one_in_use_stays(fresh, dit_dirs, monkeypatch):
    monkeypatch.setenv("FORA_EXTRA_MODELS", ",".join(dit_dirs))
    monkeypatch.setenv("FORA_MAX_LOADED_MODELS", "1")
    fresh.get_model("emoji-dit")  # pinned: never unloaded
    first, _ = fresh.get_model(dit_dirs[0])
    second, _ = fresh.get_model(dit_dirs[1])
    assert list(fresh._models) == ["emoji-dit", dit_dirs[1]]  # the least recently used one went
    with pytest.raises(ModelLoadError, match="was unloaded to make room for another model meanwhile: run again"):
        with fresh.hold(dit_dirs[0], first):
            pass
    with fresh.hold(dit_dirs[1], second):  # a request running on it: loading another leaves it loaded
        fresh.get_model(dit_dirs[2])
        assert set(fresh._models) == {"emoji-dit", dit_dirs[1], dit_dirs[2]}
    fresh.get_model(dit_dirs[0])  # once it is free, the next load unloads it
    assert list(fresh._models) == ["emoji-dit", dit_dirs[0]]
    monkeypatch.setenv("FORA_MAX_LOADED_MODELS", "0")
    with pytest.raises(ValueError, match="FORA_MAX_LOADED_MODELS=0 out of range: allowed 1 or more"):
        fresh.get_model(dit_dirs[1])


@pytest.fixture(scope="module")
def pixart_dirs(tmp_path_factory):
    """Three tiny PixArt-alpha folders: a and b differ in everything but the text encoder; c's differs too."""
    a, b, c = (make_pixart_pipeline(seed=s) for s in range(3))
    b.text_encoder = copy.deepcopy(a.text_encoder)
    dirs = []
    for name, pipe in zip("abc", (a, b, c)):
        path = tmp_path_factory.mktemp(f"pixart-{name}")
        pipe.save_pretrained(path)
        dirs.append(str(path))
    return dirs


def test_identical_text_encoders_are_loaded_once(pixart_dirs):
    a = load_pipeline(pixart_dirs[0], device="cpu")
    b = load_pipeline(pixart_dirs[1], device="cpu", share_from=[a])
    c = load_pipeline(pixart_dirs[2], device="cpu", share_from=[a, b])
    assert b.text_encoder is a.text_encoder and b.transformer is not a.transformer and b.vae is not a.vae
    assert c.text_encoder is not a.text_encoder  # same sizes, other bytes: its own
    alone = load_pipeline(pixart_dirs[1], device="cpu")
    assert (run_pixart(b, steps=2) == run_pixart(alone, steps=2)).all()  # the shared encoder gives what its own does


def _as_hub_cache(folder: str, cache: str, repo: str) -> None:
    """`folder` laid out as the Hugging Face cache holds a downloaded repo: files in `blobs/` named by their
    SHA-256, the snapshot's files links to them, `refs/main` naming the snapshot."""
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    revision = hashlib.sha1(repo.encode()).hexdigest()
    os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(revision)
    for dirpath, _, files in os.walk(folder):
        for name in files:
            src = os.path.join(dirpath, name)
            with open(src, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            blob = os.path.join(root, "blobs", digest)
            shutil.copyfile(src, blob)
            dst = os.path.join(root, "snapshots", revision, os.path.relpath(src, folder))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(dst)), dst)


def test_hub_checkpoints_share_their_text_encoder_from_the_cache(pixart_dirs, tmp_path, monkeypatch):
    """Two hub repos in the local cache (the two PixArt-alpha resolutions' case: one T5 in both), loaded through
    the hub path offline: the second takes the first's text encoder, matched by the cache's content hashes."""
    cache = str(tmp_path / "hub")
    for name, folder in zip(("org/pixart-a", "org/pixart-b", "org/pixart-c"), pixart_dirs):
        _as_hub_cache(folder, cache, name)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", cache)
    a = load_pipeline("org/pixart-a", device="cpu", local_files_only=True)
    b = load_pipeline("org/pixart-b", device="cpu", local_files_only=True, share_from=[a])
    c = load_pipeline("org/pixart-c", device="cpu", local_files_only=True, share_from=[a, b])
    assert b.text_encoder is a.text_encoder and c.text_encoder is not a.text_encoder
    assert "/blobs/" not in a._fora_folder and os.path.isfile(os.path.join(a._fora_folder, "model_index.json"))


def test_the_registry_shares_encoders_between_its_models(fresh, pixart_dirs, monkeypatch):
    monkeypatch.setenv("FORA_EXTRA_MODELS", ",".join(pixart_dirs[:2]))
    a, _ = fresh.get_model(pixart_dirs[0])
    b, _ = fresh.get_model(pixart_dirs[1])
    assert b.text_encoder is a.text_encoder


def test_zerogpu_loads_every_model_at_start_up(fresh, dit_dirs, tmp_path, monkeypatch):
    """On ZeroGPU the allowlisted models load at start-up and stay (workers fork with them); one that fails is
    shown unavailable with the reason, and no model loads later in the main process."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline", "transformer": ["x", "y"]}))
    monkeypatch.setenv("FORA_EXTRA_MODELS", ",".join([*dit_dirs, str(broken)]))
    monkeypatch.setenv("FORA_MAX_LOADED_MODELS", "1")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.delenv("FORA_HUB_MODELS", raising=False)
    embedded = ["emoji-dit", "emoji-mmdit"]  # both shipped models are on the allowlist
    assert fresh.preload() == [*embedded, *dit_dirs]
    assert list(fresh._models) == [*embedded, *dit_dirs]  # pinned: the bound does not apply to them
    choice = next(c for c in fresh.model_choices() if c.key == str(broken))
    assert not choice.available and "its load at start-up failed (ModelLoadError)" in choice.reason
    with pytest.raises(ValueError, match="is unavailable here: its load at start-up failed"):
        fresh.get_model(str(broken))
    monkeypatch.setenv("FORA_EXTRA_MODELS", ",".join([*dit_dirs, str(broken), dit_dirs[0] + "-late"]))
    with pytest.raises(ModelLoadError, match="not available on this Space: it was not loaded at start-up"):
        fresh.get_model(dit_dirs[0] + "-late")


def test_devices_compare_as_a_parameter_reports_them():
    """On CUDA a parameter reports `cuda:0` where the loader asked for `cuda`: the same device (the encoders were
    never shared on a GPU when these compared unequal)."""
    from fora.loading import same_device

    assert same_device("cuda:0", "cuda") and same_device("cpu", "cpu") and not same_device("cuda", "cpu")
    assert not same_device("cuda:1", "cuda")


def test_the_bound_is_checked_before_a_load_and_room_is_made_first(fresh, dit_dirs, monkeypatch):
    monkeypatch.setenv("FORA_EXTRA_MODELS", ",".join(dit_dirs))
    monkeypatch.setenv("FORA_MAX_LOADED_MODELS", "x")
    with pytest.raises(ValueError, match="FORA_MAX_LOADED_MODELS='x' is not an integer"):
        fresh.get_model(dit_dirs[0])
    assert dit_dirs[0] not in fresh._models  # refused before loading, not after
    monkeypatch.setenv("FORA_MAX_LOADED_MODELS", "1")
    fresh.get_model(dit_dirs[0])
    seen = []
    real = registry.load_pipeline

    def load_and_look(key, **kw):  # what is loaded while the next model loads: the bound, not the bound + 1
        seen.append(sorted(fresh._models))
        return real(key, **kw)

    monkeypatch.setattr(registry, "load_pipeline", load_and_look)
    fresh.get_model(dit_dirs[1])
    assert seen == [[]] and list(fresh._models) == [dit_dirs[1]]


def test_the_requests_waiting_for_a_failed_load_get_its_error(fresh, tmp_path, monkeypatch):
    """Requests that waited for a load that failed get its error at once, instead of each loading again (k waiters
    on a stalled download would wait k timeouts)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline", "transformer": ["x", "y"]}))
    monkeypatch.setenv("FORA_EXTRA_MODELS", str(broken))
    loads, release = [], threading.Event()
    real = registry.load_pipeline

    def slow_load(key, **kw):
        loads.append(key)
        release.wait(30)
        return real(key, **kw)

    monkeypatch.setattr(registry, "load_pipeline", slow_load)
    errors = []

    def ask():
        try:
            fresh.get_model(str(broken))
        except ModelLoadError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not loads and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the other two now wait for the first's load
    release.set()
    for t in threads:
        t.join(60)
    assert len(loads) == 1 and len(errors) == 3 and len(set(errors)) == 1
    with pytest.raises(ModelLoadError):
        fresh.get_model(str(broken))
    assert len(loads) == 2


def test_a_failed_start_up_load_shows_unavailable_in_the_page(tmp_path):
    """On ZeroGPU the models load before the page is built: the model list shows a failed one as unavailable."""
    import subprocess
    import sys

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline", "transformer": ["x", "y"]}))
    code = (
        "import app, json; from ui import registry; "
        "model = next(b for b in app.demo.blocks.values() if getattr(b, 'label', None) == 'model'); "
        "print(json.dumps([list(c) for c in model.choices]))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, SPACES_ZERO_GPU="true", FORA_EXTRA_MODELS=str(broken))
    env.pop("FORA_HUB_MODELS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    choices = json.loads(out.stdout.strip().splitlines()[-1])
    label = next(label for label, value in choices if value == str(broken))
    assert "unavailable" in label and "its load at start-up failed" in label, label
