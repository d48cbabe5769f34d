"""The web app's side: everything `app.py` serves, on top of `analysis/` and `fora/` (which never import it).

- `layout.py`: the page, built from the settings column (`settings.py`) and one module per tab (`tabs/`).
- `tabs/compare.py`, `tabs/sweep.py`, `tabs/policies.py`, `tabs/memory.py`, `tabs/table3.py`: each tab's widgets
  and handlers. A handler that updates several outputs is a method of its tab's class (which holds the widgets)
  and returns `{component: value}` (`gr.skip()` when nothing changed, e.g. a heartbeat); a handler of one output
  is a plain function returning its value.
- `gpu.py`: the `@spaces.GPU` entry points (ZeroGPU) and the GPU seconds each asks for.
- `form.py`: the form parsed and checked in one place; `registry.py`: the model allowlist and the loaded models;
  `store.py`: the bounded results the server keeps; `stream.py`: a GPU job in a worker thread, streamed, which a
  closed stream cancels at the next step; `display.py`: what every tab shows the same way.
"""
