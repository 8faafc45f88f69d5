"""The fraud consumer and FraudService."""
