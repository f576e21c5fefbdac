"""Reading a /metrics page (Prometheus's text format) in the tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of `name`: its labels and value."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    """The first sample of `name` carrying `labels` (among others); None when there is none."""
    for found, number in samples(text, name):
        if labels.items() <= found.items():
            return number
    return None
