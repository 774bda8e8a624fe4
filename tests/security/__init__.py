"""Hostile input, replayed over raw sockets to the real gateway."""
