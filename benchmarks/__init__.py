"""Tessera's own measurements against peers and ceilings (not shipped in the wheel)."""
