"""Patient records: prescriptions (docs/records.md)."""
