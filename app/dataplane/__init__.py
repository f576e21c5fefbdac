"""The data plane: readiness, admission, scoring, documents and model control, with no transport
and no process model in it (`DataPlane` in `app.dataplane.plane`)."""
