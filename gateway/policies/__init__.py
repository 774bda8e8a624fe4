"""The policy file compliance staff write, and the engine that enforces it."""
