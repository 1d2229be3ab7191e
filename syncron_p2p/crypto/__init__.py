"""Noise channels, node identities, mesh secrets, invite codes, at-rest encryption."""
