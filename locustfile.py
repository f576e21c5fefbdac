"""Load tests arrive with the serving API (the benchmark issue); there is no HTTP endpoint yet."""
