"""The servers `bench.rivals` compares with, each serving the user-sized ranker as its users would
write it; run in venvs of their own (they pin other versions of FastAPI and uvloop)."""
