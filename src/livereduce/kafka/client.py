"""librdkafka settings for livereduce's consumers and producers, secrets from the environment.

Settings are built in this order, later ones winning: livereduce's defaults for the role
(consumer or producer), then the configuration's ``listener_options.kafka`` object (any
librdkafka property: ``security.protocol``, ``sasl.mechanism``, ``ssl.ca.location``, ...), then
the environment: ``LIVEREDUCE_KAFKA_<PROPERTY>`` sets ``<property>``, the name lower-cased with
``_`` read as ``.`` (``LIVEREDUCE_KAFKA_SASL_PASSWORD`` -> ``sasl.password``), so passwords stay
out of the configuration file, as esslivedata and just-bin-it take them from the environment.
librdkafka's own log lines go to the ``livereduce.kafka.rdkafka`` logger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "LIVEREDUCE_KAFKA_"

CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
    # A group notices a dead member after this long (esslivedata and the Tansu notes: the
    # 45 s default keeps a killed instance's partitions unread for most of a minute).
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    # ESS event messages reach tens of MB (Mantid's KafkaEventListener uses 25 MB).
    "fetch.max.bytes": 100_000_000,
    "max.partition.fetch.bytes": 25_000_000,
    "reconnect.backoff.ms": 200,
    "reconnect.backoff.max.ms": 5000,
}
PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "message.max.bytes": 100_000_000,
    "linger.ms": 5,
    "reconnect.backoff.ms": 200,
    "reconnect.backoff.max.ms": 5000,
}

_RDKAFKA_LOG = logging.getLogger("livereduce.kafka.rdkafka")


def settings(
    bootstrap: str,
    options: Mapping[str, Any] | None,
    *,
    role: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The librdkafka configuration for a ``role`` ("consumer" or "producer") on ``bootstrap``
    (comma-separated host:port list), see the module docstring. Raises ValueError for another
    role."""
    if role not in ("consumer", "producer"):
        raise ValueError(f"role must be consumer or producer, not {role!r}")
    merged: dict[str, Any] = dict(CONSUMER_DEFAULTS if role == "consumer" else PRODUCER_DEFAULTS)
    merged.update(options or {})
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            merged[name[len(ENV_PREFIX) :].lower().replace("_", ".")] = value
    merged["bootstrap.servers"] = bootstrap
    merged["logger"] = _RDKAFKA_LOG
    return merged


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` for a log line: secrets (password, secret, key properties) shown as ***."""
    hidden = ("password", "secret", ".key", "token")
    return {
        key: "***" if any(word in key for word in hidden) else value
        for key, value in config.items()
        if key != "logger"
    }
