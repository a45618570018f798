"""The ways in: the command line, the API functions, batch, the Ray cluster, the page's logic without Gradio."""
