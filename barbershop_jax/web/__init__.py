"""`barbershop-jax serve`: a web page over the pipeline (the `web` extra: Gradio). jobs.py is
the work (uploads, alignment, one job at a time on one HairTransfer), app.py the page. Nothing
below this layer imports it; app.py imports gradio, so the CLI imports this package only for
`serve`. Importing it turns Gradio's usage analytics and Hugging Face's telemetry off (before
gradio is imported through it): a page for people's face photos sends nothing anywhere."""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def serve(weights=None, host: str = "127.0.0.1", port: int = 7860, out_dir=None, *, block: bool = True, **server):
    """Load the models once and serve the page on host:port (localhost by default). Returns
    (server, page); with block=False at once (the page runs in a thread: page.close() stops it).
    server: jobs.Server's options (batch_size, steps, compile_cache, limits)."""
    from barbershop_jax.web import app, jobs

    server = jobs.Server(weights, out_dir, **server)
    return server, app.launch(server, host, port, block=block)
