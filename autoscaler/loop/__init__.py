"""The control loop: observe -> decide -> act, once per interval, as the leader.

observe.py reads the runtime and Redis; act.py carries out a plan; leader.py is the lock;
events.py the record of actions; daemon.py one pass and config reloads. The
scheduler, signals and nudges live in autoscaler.service.
"""
