"""Sources and sinks of events (Kafka, JSONL files); the only place that imports the Kafka client."""
