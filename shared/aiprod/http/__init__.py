"""The HTTP surface: the REST API, its problem+json errors, its OpenAPI document, and the
handlers functions/main.py names (every Cloud Function is an HTTP server: Pub/Sub pushes
arrive as CloudEvents over HTTP). Parses and answers; the decisions are in services."""
