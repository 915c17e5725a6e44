"""serving/tfserving."""
