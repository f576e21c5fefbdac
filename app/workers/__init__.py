"""Several HTTP worker processes feeding one engine process: the supervisor, the engine, a
worker's link to it and what crosses between them."""
