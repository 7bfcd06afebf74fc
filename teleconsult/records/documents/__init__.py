"""Patient records: documents (docs/records.md, "Documents")."""
