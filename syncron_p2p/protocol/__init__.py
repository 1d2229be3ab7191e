"""Wire messages, their codec, and the per-peer session machine (sans-IO)."""
