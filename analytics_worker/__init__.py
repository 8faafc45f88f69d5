"""The analytics consumer and AnalyticsService."""
