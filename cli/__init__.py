"""The `corolla` command: a thin dispatcher to each role's own command module."""
