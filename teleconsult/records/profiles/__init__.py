"""Patient records: profiles (docs/records.md)."""
