"""syncron-p2p: peer-to-peer folder sync without a server and without timestamps."""

__version__ = "0.1.0"
