"""The contract between the autoscaler and the shards: what both sides must agree on.

Session and shard ids, Redis key names, nginx's hash ring and where sessions are placed on it,
the heartbeat wire format, the configuration (models and loading), the clock both sides read,
and the process-tree reader. The autoscaler and the shard import this package and never each
other; this package imports neither, nor any network library (import-linter checks both).

Everything here is purely computational except three named edges: `configload.load_config`
reads the config file, `proctree` reads /proc (through psutil) and signals processes, and
`clock.SystemClock` reads the system clock.
"""
