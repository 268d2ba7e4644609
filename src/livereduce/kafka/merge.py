"""``livereduce-merge``: sum scale-out instances' partial results into one result file.

``livereduce-merge --output OUT PARTIAL.h5 ...`` sums partial files (each instance writes
``<output_dir>/<output_workspace>_<run>.h5``; on a shared file system such as /SNS they sit
side by side). ``livereduce-merge --output OUT --bootstrap HOST:PORT --results-topic TOPIC
--run N`` reads the results topic from its earliest offset, keeps each instance's latest
partial of run ``N``, checks that their offsets tile every partition, and sums them.
``--kafka KEY=VALUE`` adds librdkafka properties (secrets also from ``LIVEREDUCE_KAFKA_*``).

The output is written to a temporary name and renamed. Exit status: 0 merged, 1 merged but the
partials overlap or leave gaps (printed), 2 nothing to merge or unreadable input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import scipp as sc
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from livereduce.atomic import write_atomically
from livereduce.kafka import client
from livereduce.kafka.partials import (
    MergeError,
    Partial,
    check_covers,
    decode_partial,
    header_of,
    latest_per_instance,
    sum_partials,
)

log = logging.getLogger(__name__)

QUIET_S = 1.0
"""After every partition reported its end, read on until nothing new came for this long: the
end a broker reports can be short of what it stores."""


def read_results(
    bootstrap: str,
    topic: str,
    *,
    options: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> list[tuple[Partial, bytes]]:
    """Every partial on ``topic`` as (header, value). Raises KafkaException when the broker
    cannot be reached or the topic does not exist within ``timeout_s``."""
    settings = client.settings(bootstrap, options, role="consumer")
    settings["group.id"] = f"livereduce-merge-{time.time_ns()}"
    consumer = Consumer(settings)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        if topic not in metadata.topics or metadata.topics[topic].error:
            raise KafkaException(f"results topic {topic} is not on {bootstrap}")
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: list[tuple[Partial, bytes]] = []
        ended: set[int] = set()
        last_news = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            now = time.monotonic()
            if message is None:
                if len(ended) == len(partitions) and now - last_news >= QUIET_S:
                    break
                continue
            last_news = now
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition() or 0)
                continue
            partial = header_of(message.headers())
            if partial is not None:
                found.append((partial, message.value() or b""))
        return found
    finally:
        consumer.close()


def merge_topic(
    bootstrap: str, topic: str, run: int, *, options: dict[str, Any] | None = None
) -> tuple[Any, list[str], list[Partial]]:
    """The sum of each instance's latest partial of ``run`` on ``topic``, the cover problems
    (:func:`check_covers`) and the partials used. Raises MergeError when there is none."""
    latest = latest_per_instance(read_results(bootstrap, topic, options=options), run)
    if not latest:
        raise MergeError(f"no partial result of run {run} on {topic}")
    used = [partial for partial, _ in latest.values()]
    total = sum_partials(decode_partial(value) for _, value in latest.values())
    return total, check_covers(used), used


def merge_files(paths: Sequence[Path]) -> Any:
    """The sum of the partial files at ``paths``. Raises MergeError for an unreadable one."""
    parts = []
    for path in paths:
        try:
            parts.append(sc.io.load_hdf5(path))
        except (OSError, KeyError, ValueError) as error:
            raise MergeError(f"cannot read partial {path}: {error}") from None
    return sum_partials(parts)


def write_result(result: Any, output: Path) -> None:
    """Save ``result`` as scipp HDF5 at ``output`` through a temporary file and a rename."""
    write_atomically(output, lambda temporary: sc.io.save_hdf5(result, temporary))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="livereduce-merge",
        description="Sum the partial results of livereduce instances in one consumer group.",
    )
    parser.add_argument("--output", type=Path, required=True, help="the merged result file")
    parser.add_argument("partials", nargs="*", type=Path, metavar="PARTIAL", help="partial files")
    parser.add_argument("--bootstrap", help="read the partials from Kafka at these servers")
    parser.add_argument("--results-topic", help="the topic the instances publish partials to")
    parser.add_argument("--run", type=int, help="the run to merge (with --bootstrap)")
    parser.add_argument(
        "--kafka", action="append", default=[], metavar="KEY=VALUE", help="librdkafka property"
    )
    args = parser.parse_args(argv)
    if bool(args.partials) == bool(args.bootstrap):
        parser.error("give either partial files or --bootstrap (with --results-topic and --run)")
    if args.bootstrap and (not args.results_topic or args.run is None):
        parser.error("--bootstrap needs --results-topic and --run")
    for item in args.kafka:
        if "=" not in item:
            parser.error(f"--kafka expects KEY=VALUE, got {item!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; returns the exit status (module docstring)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    problems: list[str] = []
    try:
        if args.bootstrap:
            options = dict(item.split("=", 1) for item in args.kafka)
            result, problems, used = merge_topic(
                args.bootstrap, args.results_topic, args.run, options=options
            )
            sources = ", ".join(f"{p.instance} (#{p.sequence})" for p in used)
        else:
            result = merge_files(args.partials)
            sources = ", ".join(str(p) for p in args.partials)
    except (MergeError, KafkaException) as error:
        print(f"livereduce-merge: {error}", file=sys.stderr)
        return 2
    write_result(result, args.output)
    print(f"merged {sources} into {args.output}", flush=True)
    for problem in problems:
        print(f"livereduce-merge: {problem}", file=sys.stderr)
    if problems and args.bootstrap:
        for partial in used:
            print(f"livereduce-merge: {partial.instance} #{partial.sequence} covers "
                  f"{partial.covers}", file=sys.stderr)  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
