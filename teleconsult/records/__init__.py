"""Patient records: demographics and clinical notes, every read and change audited."""
