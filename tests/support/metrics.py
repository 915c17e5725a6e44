"""Prometheus scrapes in tests: every sample of a metrics page by name and labels.

Usage::

    from tests.support.metrics import scrape

    samples = scrape(f"{gateway.url}/metrics")
    samples[("gateway_model_version_errors", (("version", "2"),))]   # 1.0
"""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str) -> dict[Sample, float]:
    """GET ``url`` (a Prometheus text page): {(sample name, sorted label pairs): value}."""
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200, f"{url}: HTTP {resp.status_code}"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    }
