"""Patient records: notes (docs/records.md)."""
