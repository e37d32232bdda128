"""goalkeeper.sandbox."""
