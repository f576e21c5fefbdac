"""The server: one data plane (`app.dataplane`) under thin transports (`app.http` for REST,
`app.grpc`), in one process or as HTTP workers feeding an engine process (`app.workers`);
`app.__main__` picks the process model."""
