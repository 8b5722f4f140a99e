"""Exporters: metrics out of a running supervisor."""
