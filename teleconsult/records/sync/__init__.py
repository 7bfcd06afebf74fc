"""Patient records: the change feed for offline apps (docs/records.md, "Sync")."""
