"""A node's knowledge of its own folder: records, versions, merkle tree, ignore rules."""
