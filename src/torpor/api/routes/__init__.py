"""The API's routes, one module per resource, each a `router(...)` factory that gives a
FastAPI APIRouter (create_app includes them): ops (health, readiness, metrics), sessions,
messages (posting and the live event stream), log (entries, export, snapshots), sandbox
(exec and files) and auth (whoami). The factories take what shapes the OpenAPI document
(auth on or off, the page limit); handlers reach the app's state through `deps.Api`."""
