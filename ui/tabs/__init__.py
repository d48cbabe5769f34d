"""One module per tab of the app: its widgets (a class built inside its `gr.Tab`), its events and handlers."""
