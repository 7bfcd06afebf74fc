"""Patient records: care plans (docs/records.md)."""
