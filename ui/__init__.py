"""The Gradio app's UI: tabs, GPU entry points, the form, the server's stores and the streaming worker."""
