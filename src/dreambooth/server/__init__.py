"""The server: the A1111 API (``a1111``), training jobs (``jobs``, ``jobs_api``), what can be loaded
(``catalog``), the device and its progress (``engine``), put together by ``app.create_app``."""
