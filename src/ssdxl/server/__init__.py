"""``ssdxl serve``: one HTTP server for Segmind, AUTOMATIC1111 and OpenAI clients, over one job queue.

Where things are:

- ``app.py`` builds the FastAPI app; ``config.py`` holds its settings.
- ``dialects/`` translate each API's requests into one ``GenerationRequest`` and its results back;
  ``jobs_api.py`` is the native asynchronous jobs API (``/v2/jobs``) the web page uses.
- ``service.py`` is the one job path all of them share: validate, store, enqueue, wait.
- ``store.py`` (SQLite) and ``storage.py`` (image files) make jobs durable; ``runner.py`` claims
  batches of compatible jobs and runs them; ``dispatch.py`` runs the runner in this process or
  hands jobs to RQ workers on Redis.
- ``auth.py`` (API keys, rate limits) and ``limits.py`` (request body size) guard the edge.
"""

PREVIEW_EVERY = 4  # steps between a running job's latent previews (and its last step); here so the CLI stays light
