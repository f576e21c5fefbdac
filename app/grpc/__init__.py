"""KServe V2 over gRPC, thin over the data plane."""
