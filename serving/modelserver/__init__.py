"""serving/modelserver."""
