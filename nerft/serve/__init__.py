"""The HTTP service: a FastAPI app over one decoding engine, fed by a batching worker thread."""
