# A private PostgreSQL cluster on 127.0.0.1 for the tests; sourced by .ci/run.
# Exports RSSC_TEST_POSTGRES_URI, which the tracking-server tests use (and require when CI=true).
PG_PORT="${PG_PORT:-55432}"

start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  PGDATA_DIR=$(mktemp -d /tmp/rssc-pg.XXXXXX)
  chown postgres "$PGDATA_DIR"
  runuser -u postgres -- "$bin/initdb" -D "$PGDATA_DIR" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w \
    -o "-p $PG_PORT -k $PGDATA_DIR -c listen_addresses=127.0.0.1" start >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE rssc_test" >/dev/null
  export RSSC_TEST_POSTGRES_URI="postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/rssc_test"
  PG_BIN="$bin"
  echo "[ci] PostgreSQL running: $RSSC_TEST_POSTGRES_URI"
}

stop_postgres() {
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PGDATA_DIR"
}
