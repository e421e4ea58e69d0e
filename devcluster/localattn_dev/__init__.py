"""localattn."""
