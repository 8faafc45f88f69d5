"""What operators see: structured logs, Prometheus metrics and the audit trail."""
