"""Kafka streams (ESS, ISIS): the wire formats, client settings, run control, replay and merge.

The listener itself is :mod:`livereduce.worker.listeners.kafka`; see docs/kafka.md.
"""
