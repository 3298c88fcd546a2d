"""Adapters between annotation platforms and the polypseg core (one subpackage per platform)."""
