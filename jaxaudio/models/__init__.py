"""Flax (linen) audio embedding models, their registry and layer groups."""
