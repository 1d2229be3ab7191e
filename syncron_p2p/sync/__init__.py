"""The sans-IO sync engine: reconcile, conflicts, pull planning."""
