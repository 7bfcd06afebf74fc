"""Patient records: consents (docs/records.md)."""
