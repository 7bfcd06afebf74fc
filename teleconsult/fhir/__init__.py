"""FHIR R4 views of teleconsult's data (read-only): Appointment, Schedule, Slot."""
