#!/usr/bin/env bash
# Starts and stops a single-node Apache Kafka (KRaft) built from the official Maven Central jars.
#
#   scripts/kafka/kafka.sh up      resolve jars (cached), format storage once, start, wait until it answers
#   scripts/kafka/kafka.sh down    stop the broker this script started
#   scripts/kafka/kafka.sh status  say whether a broker answers on the address
#
# Address: SENDTRACK_KAFKA_BROKER (default localhost:9092); the controller listens on port+1.
# Jars are cached in SENDTRACK_CACHE_DIR (default ~/.cache/sendtrack), outside git; broker data and logs
# live in KAFKA_HOME_DIR (default ./.kafka, git-ignored).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
broker="${SENDTRACK_KAFKA_BROKER:-localhost:9092}"
host="${broker%:*}"
port="${broker##*:}"
controller_port="$((port + 1))"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cache="${SENDTRACK_CACHE_DIR:-$HOME/.cache/sendtrack}/kafka-$version"
home="${KAFKA_HOME_DIR:-$PWD/.kafka}/$port"
pidfile="$home/kafka.pid"

say() { printf 'kafka: %s\n' "$*"; }
die() { printf 'kafka: %s\n' "$*" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

need_tools() {
  command -v java >/dev/null 2>&1 || die "Java 17+ is required: install it (Debian: apt-get install openjdk-17-jre-headless) and retry."
  command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch the Kafka jars: install it (Debian: apt-get install maven) and retry."
  local major
  major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [ "${major:-0}" -ge 17 ] || die "Java 17+ is required for Kafka $version, found Java ${major:-unknown}."
}

resolve_jars() {
  if [ -f "$cache/.complete" ]; then return; fi
  say "resolving Apache Kafka $version jars from Maven Central into $cache (once)"
  mkdir -p "$cache"
  mvn -q -B -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$cache" -DincludeScope=runtime \
    || die "Maven could not resolve org.apache.kafka:kafka_2.13:$version (see the output above)."
  touch "$cache/.complete"
}

write_config() {
  mkdir -p "$home/data" "$home/logs"
  cat >"$home/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$host:$controller_port
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$controller_port
advertised.listeners=PLAINTEXT://$host:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$home/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=67108864
# The log cleaner compacts the tables' changelogs in passes that rewrite a whole partition: at 5 M
# messages it took 0.3-0.75 of a core for 15-25 s at a time, on the two cores it shares here with the
# worker (docs/performance.md, twenty-fifth session). Throttled, each pass runs longer and thinner.
log.cleaner.io.max.bytes.per.second=33554432
EOF
  cat >"$home/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    File:
      name: File
      fileName: "$home/logs/server.log"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: File
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
EOF
}

java_cmd() {
  java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$home/log4j2.yaml" -cp "$cache/*" "$@"
}

up() {
  if listening; then say "a broker already answers on $broker: nothing to start"; return; fi
  need_tools
  resolve_jars
  write_config
  if [ ! -f "$home/data/meta.properties" ]; then
    say "formatting KRaft storage in $home/data"
    java_cmd kafka.tools.StorageTool format --standalone -t "$(java_cmd kafka.tools.StorageTool random-uuid)" \
      -c "$home/server.properties" >"$home/logs/format.log" 2>&1 \
      || die "formatting storage failed: $(tail -n 3 "$home/logs/format.log")"
  fi
  say "starting Apache Kafka $version on $broker (logs: $home/logs)"
  setsid nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$home/log4j2.yaml" -cp "$cache/*" kafka.Kafka "$home/server.properties" \
    >"$home/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if listening; then say "broker is up on $broker"; return; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || die "the broker exited: $(tail -n 5 "$home/logs/stdout.log" "$home/logs/server.log" 2>/dev/null)"
    sleep 0.5
  done
  die "the broker did not answer on $broker within 60 s (logs: $home/logs)"
}

down() {
  if [ ! -f "$pidfile" ]; then say "no broker started by this script on $broker"; return; fi
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping the broker (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
  say "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if listening; then say "a broker answers on $broker"; else say "nothing answers on $broker"; exit 1; fi ;;
  *) die "usage: $0 up|down|status" ;;
esac
