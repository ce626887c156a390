#!/bin/sh
# Fly mounts volumes owned by root: give the spool to the unprivileged user, then run the service
# as that user. `exec` keeps the service as PID 1, so it receives Fly's SIGINT itself.
set -eu
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$SPOOL_DIR"
  chown app:app "$SPOOL_DIR"
  exec setpriv --reuid=app --regid=app --init-groups /usr/local/bin/twilio-ingest "$@"
fi
exec /usr/local/bin/twilio-ingest "$@"
