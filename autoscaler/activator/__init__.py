"""The activator: holds requests no shard can take until one can (docs/activator.md)."""
