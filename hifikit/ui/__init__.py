"""``hifikit ui``: a local web workbench over the library (runs, sweeps, the strategy editor, quantize and
verify, compare).

- server.py: the checks of a launch, the bound socket, uvicorn;
- security.py: the token, Host, Origin and root checks every request passes;
- app.py: the ASGI app (pages and a JSON API that call the library);
- tasks.py + worker.py: jobs started from a page, each in a process of its own, tracked as runs;
- payloads.py: the JSON the pages draw, made from library results.

Nothing here is imported by the rest of hifikit; it needs the ``ui`` extra (starlette, uvicorn, jinja2,
plotly).
"""
