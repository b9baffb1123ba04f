"""Integration tests: real Apache Kafka (and later Prometheus), started by session fixtures."""
