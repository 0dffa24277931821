"""The web UI (gradio), mounted on the server's app by ``app.mount_ui``: it sits on the server and
uses its engine and job queue; nothing below it imports it."""
