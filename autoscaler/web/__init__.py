"""The autoscaler's own HTTP surface: status page, JSON status, route lookup, /metrics, /healthz."""
