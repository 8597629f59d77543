"""The REST service (FastAPI, Redis Streams, workers) and result rendering."""
