"""Transfer engines: every byte copy of the store, batched on lanes, dispatched per medium pair."""
