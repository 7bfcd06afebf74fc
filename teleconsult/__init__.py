"""teleconsult: a real-time communications server for telemedicine."""

__version__ = "0.1.0"
