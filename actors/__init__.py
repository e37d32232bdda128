"""goalkeeper.actors."""
