#!/usr/bin/env bash
# Creates sendtrack's topics (CONTRACT §3 plus the internal ones) before the worker starts, all with
# SENDTRACK_PARTITIONS partitions, and fails if one already exists with another partition count.
# Idempotent: the `topics` service of docker-compose.yml runs it on every `docker compose up`.
#
#   create-topics.sh TOPIC...    names without SENDTRACK_TOPIC_PREFIX (it is prepended here, as the worker does)
#
# Broker: SENDTRACK_KAFKA_BROKER. Tools: KAFKA_BIN (default /opt/kafka/bin, as in the apache/kafka image).
set -euo pipefail

broker="${SENDTRACK_KAFKA_BROKER:?SENDTRACK_KAFKA_BROKER is not set}"
partitions="${SENDTRACK_PARTITIONS:-8}"
prefix="${SENDTRACK_TOPIC_PREFIX:-}"
kafka_topics="${KAFKA_BIN:-/opt/kafka/bin}/kafka-topics.sh"
# retention.ms as the worker sets it (sendtrack/topics.py retention_ms, docs/retention.md).
retention_ms="$(awk -v d="${SENDTRACK_TOPIC_RETENTION_DAYS:-7}" 'BEGIN { printf "%d", d * 86400000 }')"
webhook_retention_ms="$(awk -v h="${SENDTRACK_WEBHOOK_RETENTION_HOURS:-72}" 'BEGIN { printf "%d", h * 3600000 }')"

say() { printf 'topics: %s\n' "$*"; }
warn() { printf 'topics: %s\n' "$*" >&2; }
die() { warn "$@"; exit 1; }

[ "$#" -gt 0 ] || die "usage: $0 TOPIC..."
case "$partitions" in
  '' | *[!0-9]* | 0) die "SENDTRACK_PARTITIONS must be a positive integer, got '$partitions'" ;;
esac

# Each kafka-topics.sh call starts a JVM: list once, create only what is missing, describe once.
existing="$("$kafka_topics" --bootstrap-server "$broker" --list)"
for name in "$@"; do
  topic="$prefix$name"
  if grep -qxF -e "$topic" <<<"$existing"; then
    continue
  fi
  # The record limits and retention the worker sets when it creates them (sendtrack/topics.py).
  case "$name" in
    provider-webhooks) config=(--config max.message.bytes=4194304 --config "retention.ms=$webhook_retention_ms") ;;
    sendtrack-routed | sendtrack-by-provider-id) config=(--config max.message.bytes=1048576 --config "retention.ms=$retention_ms") ;;
    *) config=(--config "retention.ms=$retention_ms") ;;
  esac
  say "creating $topic ($partitions partitions)"
  "$kafka_topics" --bootstrap-server "$broker" --create --if-not-exists --topic "$topic" \
    --partitions "$partitions" --replication-factor 1 "${config[@]}"
done

# The worker joins these topics partition by partition (co-partitioned): a topic left behind by a run
# with another SENDTRACK_PARTITIONS would send a message's records to different partitions. Summary
# lines of --describe read "Topic: <name>\tTopicId: ...\tPartitionCount: <n>\t...".
counts="$("$kafka_topics" --bootstrap-server "$broker" --describe | awk -F '\t' '
  /^Topic: / {
    name = ""; count = ""
    for (i = 1; i <= NF; i++) {
      if ($i ~ /^Topic: /) name = substr($i, 8)
      if ($i ~ /^PartitionCount: /) count = substr($i, 17)
    }
    print name "\t" count
  }')"
status=0
for name in "$@"; do
  topic="$prefix$name"
  count="$(awk -F '\t' -v t="$topic" '$1 == t { print $2 }' <<<"$counts")"
  if [ -z "$count" ]; then
    warn "$topic was not created"
    status=1
  elif [ "$count" != "$partitions" ]; then
    warn "$topic has $count partitions, SENDTRACK_PARTITIONS is $partitions" \
      "(delete the topic, or the kafka-data volume: docker compose down -v)"
    status=1
  fi
done
[ "$status" -eq 0 ] || exit "$status"
say "ready: $# topics with $partitions partitions on $broker"
