"""REST: the guarded HTTP protocol, the FastAPI app and its routes, thin over the data plane."""
