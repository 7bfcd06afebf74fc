"""Patient records: households (docs/records.md)."""
