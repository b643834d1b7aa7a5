"""The chaos suite: the product's promises under faults (servers killed, floods, fuzzed input)."""
