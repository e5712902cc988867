"""Versioned SQL migrations: ``NNNN_name.sql``, applied in order by collector/migrate.py."""
