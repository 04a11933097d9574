"""Indexes of the page store: which slot of which region holds which page, and which are free."""
