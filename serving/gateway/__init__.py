"""serving/gateway."""
