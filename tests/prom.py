"""Reading this test process's metrics (shared.metrics.PROCESS): tests compare a value
before and after what they do, since the process's metrics outlive each test."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import PROCESS


def sample(name: str, **labels: str) -> float:
    """One series' value (0 if it has none yet)."""
    return PROCESS.get_sample_value(name, labels) or 0.0


def total(name: str) -> float:
    """The sum of a sample's series over all their labels."""
    return sum(s.value for family in PROCESS.collect() for s in family.samples
               if s.name == name)


def scraped(text: str, name: str, **labels: str) -> float:
    """One series' value in a ``GET /metrics`` answer (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def scraped_total(text: str, name: str) -> float:
    """The sum of a sample's series over all their labels, in a ``GET /metrics`` answer."""
    return sum(float(s.value) for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == name)


def grew(before: str, after: str, name: str, **labels: str) -> float:
    """How much one series grew between two ``GET /metrics`` answers."""
    return scraped(after, name, **labels) - scraped(before, name, **labels)
