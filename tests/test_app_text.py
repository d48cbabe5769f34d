"""Issue 19 item 1 and issue 20 item 3: text-to-image models through every tab's handler, as the server runs them.
Tiny random SD3, FLUX, Sana and emoji-mmdit pipelines are saved to folders and registered as an operator does
(`FORA_EXTRA_MODELS`), then loaded by the app's own path (`fora.loading.load_pipeline`). FLUX is registered as a known
model with a model card of 32 x 32 px instead: an operator's folder runs at the pipeline's default size, which for
FLUX is 128 latent pixels a side whatever the VAE (256 px here, 4,096 tokens: 40x the time of the others)."""

import numpy as np
import pipelines
import pytest
from test_app import run_generate, shown
from test_emoji_mmdit import tiny_pipeline

from analysis.prompts import EMOJI_EVAL_PROMPTS, load_prompts
from fora import full_steps
from fora.loading import MODELS, ModelSpec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

# the kinds each family's maps show: (attention figure's panels, MLP figure's panels)
KINDS = {
    "emoji-mmdit": (["attn", "context_attn"], ["mlp", "context_mlp"]),
    "sd3": (["attn", "context_attn"], ["mlp", "context_mlp"]),
    "flux": (["attn", "context_attn"], ["mlp", "context_mlp", "attn_mlp"]),
    "sana": (["attn", "cross_attn"], ["mlp"]),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family in KINDS:
        path = str(tmp_path_factory.mktemp(f"tiny-{family}"))
        (tiny_pipeline() if family == "emoji-mmdit" else pipelines.build(family)).save_pretrained(path)
        out[family] = path
    return out


CARDS = {"flux": ("FluxPipeline", {"height": 32, "width": 32})}  # families registered as known models, with cards


@pytest.fixture(scope="module")
def keys(folders):
    """Each family's key in the model list: the folder for an operator's model, a name for a known one."""
    return {family: f"tiny-{family}" if family in CARDS else folder for family, folder in folders.items()}


@pytest.fixture(scope="module")
def layout(folders, keys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORA_EXTRA_MODELS", ",".join(folders[f] for f in folders if f not in CARDS))
        for family, (pipeline, card) in CARDS.items():
            spec = ModelSpec(
                keys[family], folders[family], "text", 4, 3.5, f"tiny {family}", pipeline, call_kwargs=card
            )
            mp.setitem(MODELS, keys[family], spec)  # its folder is its source, as the embedded models'
        mp.setenv("FORA_MAX_LOADED_MODELS", "4")
        import app  # noqa: F401  (the server's settings: one torch thread)
        from ui.layout import build_layout

        yield build_layout()


def prompt_for(family: str) -> str:
    return "a small cat on the left on a red background" if family == "emoji-mmdit" else "a red bicycle"


def generate(layout, model, prompt, steps=4, interval=2, **kw):
    return run_generate(layout, model=model, label=None, prompt=prompt, steps=steps, interval=interval, **kw)


@pytest.mark.parametrize("family", sorted(KINDS))
def test_a_text_model_through_compare_sweep_and_policies(layout, keys, family):
    import gradio as gr

    s, c = layout.settings, layout.compare
    model = keys[family]
    # choosing it: the prompt box with an example, the example list, the family's modules
    change = s.on_model_change(model, "attn")
    assert change[s.prompt]["visible"] and not change[s.label]["visible"]
    examples = change[s.examples]["choices"]
    expected = load_prompts(EMOJI_EVAL_PROMPTS) if family == "emoji-mmdit" else load_prompts()
    assert len(examples) == 8 and set(examples) <= set(expected) and change[s.prompt]["value"] == examples[0]
    attention, mlps = KINDS[family]
    assert change[c.kind_choice]["choices"] == [
        k
        for k in ("attn", "context_attn", "attn2", "cross_attn", "mlp", "context_mlp", "attn_mlp")
        if k in attention + mlps
    ]

    # Compare: images, metrics and a map panel per kind of the family, on one colour scale
    final = shown(generate(layout, model, prompt_for(family)))
    assert final[c.status].startswith("done: N=2") and not final[c.frame]["visible"]  # the frame slider: videos'
    base, cached = final[c.base_img], final[c.fora_img]
    assert base.shape == cached.shape and not np.array_equal(base, cached)
    for figure, kinds in ((final[c.heat_attn], attention), (final[c.heat_mlp], mlps)):
        panels = [a.text for a in figure.layout.annotations]
        assert len(figure.data) == len(kinds) == len(panels), (family, panels)
        assert all(np.isfinite(np.asarray(t.z, dtype=float)).any() for t in figure.data)
    table = dict(final[c.metrics])
    full = len(full_steps(4, 2))
    assert table["full / reuse steps"] == f"{full} / {4 - full}"
    # the share computed, the speedup it allows and the measured one, side by side
    rows = [r[0] for r in final[c.metrics]]
    assert rows[:3] == [
        "attention/MLP calls computed",
        "speedup, ideal (module calls / computed calls)",
        "speedup, measured (baseline / FORA, median of pairs)",
    ]
    computed, total = (int(x) for x in table["attention/MLP calls computed"].split(" (")[0].split(" of "))
    assert computed == total * full // 4 and table["speedup, ideal (module calls / computed calls)"] == (
        f"{total / computed:.2f}x"
    )

    # a context-stream kind's step x step map redraws from the kept result
    token = final[c.last]
    from ui.tabs import compare as compare_tab

    assert compare_tab.redraw_pairwise(token, "0", attention[-1], model).to_dict()["data"]

    # Sweep: the prompt through N = 1, 2 with the same seed
    outs = list(layout.sweep.sweep(model, None, prompt_for(family), 4, 0, 4.0, ["1", "2"], 1))
    assert shown(outs)[layout.sweep.status].startswith("done")

    # Policies: FORA, a plan calibrated on the model's calibration prompts, cache-dit's DBCache at the cost
    chosen = ["FORA", "calibrated", "DBCache"]
    outs = list(layout.policies.policies(model, None, prompt_for(family), 6, 0, 4.0, chosen, 2))
    final = shown(outs)
    rows = final[layout.policies.table]
    names = [r[0].split()[0] for r in np.asarray(rows.values if hasattr(rows, "values") else rows)]
    assert names == [c.split()[0].lower() for c in chosen]

    # a word the emoji model does not know is refused before anything runs, naming it
    if family == "emoji-mmdit":
        with pytest.raises(gr.Error, match="unknown word.*'bicycle'"):
            generate(layout, model, "a red bicycle")
