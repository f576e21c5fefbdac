"""Models: the offline pipeline (data, architectures, training, export) and the numpy-only artifacts
reader the serving path uses. Importing this package imports neither torch nor any runtime."""
