"""rankmix."""
