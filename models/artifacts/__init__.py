"""What the offline pipeline writes and the server reads, with numpy only: the repository's
layout, a version's manifest, acceleration record and checksums, a model's config.toml and graph
signature, feature tables and ranking specs. Importing it imports neither torch nor onnx."""
