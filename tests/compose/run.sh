#!/usr/bin/env bash
# `make compose-test`: the compose stack on this host's Docker engine, for real. Brings up what a
# DICOM round trip and the monitoring need (not Doris: its BE wants vm.max_map_count, no swap and
# 16 GB that a CI runner seldom has), runs tests/compose/test_stack.py against it, and tears it
# down, volumes included. Without a Docker engine it says so and succeeds: there is nothing to test.
#   tests/compose/run.sh [BIN]     BIN: the virtualenv's bin folder (default: .venv/bin)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-.venv/bin}

if ! reason=$(docker info 2>&1 >/dev/null); then
  echo "compose-test: skipped: no Docker engine here ($(tail -n 1 <<<"$reason"))."
  echo "  It needs Docker Engine with the compose plugin; run it where \`docker info\` succeeds."
  exit 0
fi
if ! docker compose version >/dev/null 2>&1; then
  echo "compose-test: Docker is here but its compose plugin is not: install docker-compose-plugin" >&2
  exit 1
fi

# A project of its own: `down --volumes` at the end must never reach the volumes of a stack
# someone runs from the same file (project `pacsflow`). Ports and the subnet are the same, so that
# stack has to be down meanwhile.
compose=(docker compose -p pacsflow-compose-test -f compose/docker-compose.yml)
services=(scp worker web nginx prometheus grafana)
scratch=$(mktemp -d)

finish() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "compose-test: failed; the services' last log lines:" >&2
    "${compose[@]}" logs --no-color --tail 80 >&2 || true
  fi
  "${compose[@]}" down --volumes --remove-orphans --timeout 30 || true
  rm -rf "$scratch"
  exit "$status"
}
trap finish EXIT

# --wait: until every service listed is healthy (or running, without a healthcheck) and the
# one-shots they wait for (topics, migrate, nginx-config) have completed.
"${compose[@]}" up --detach --build --wait --wait-timeout 600 "${services[@]}"

# nginx-config's self-signed certificate, for the test to verify HTTPS against.
"${compose[@]}" cp nginx:/etc/pacsflow-nginx/tls/cert.pem "$scratch/cert.pem"

COMPOSE_TEST_CA="$scratch/cert.pem" "$bin/pytest" -p no:cacheprovider --basetemp="$scratch/pytest" \
  tests/compose/test_stack.py
