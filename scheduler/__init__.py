"""Batching queue, routing, latency estimation and admission (arrives with the serving issue)."""
