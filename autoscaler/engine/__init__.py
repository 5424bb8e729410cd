"""The scaling engine: purely computational, no side effects (import-linter keeps I/O out).

`decide(observed, policy, history, now) -> Plan` (decide.py), its vocabulary (model.py), the raw
observation and its reduction to the engine's input (fleet.py), schedule windows (schedules.py)
and the trace replay behind `autoscaler simulate` (simulate.py).
"""
