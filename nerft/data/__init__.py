"""Corpus readers, cleaning, splitting and statistics: everything before the prompt."""
