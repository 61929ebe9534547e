"""Encoding, packing, the training loop and its callbacks."""
