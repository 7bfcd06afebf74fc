"""Patient records: vitals (docs/records.md)."""
