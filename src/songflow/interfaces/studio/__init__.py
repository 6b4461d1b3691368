"""The Gradio studio: the app, the form built from the request classes, and its history engine."""
