"""Metrics providers: the I/O behind `metrics_provider.MetricsProvider` (Prometheus' HTTP API, direct scraping).

Kept free of imports so that the pure `scrape_eval` module can be imported without the HTTP ones.
"""
