#!/bin/sh
# Run by the postgres image once, when it initialises an empty data volume
# (docker-compose.yml): the server's runtime role. It owns nothing; every
# `teleconsult migrate` (and `serve`, which migrates as DATABASE_OWNER_URL)
# grants it exactly what the application needs (README, Database).
set -eu
app_password="$(cat /run/secrets/postgres_app_password)"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_password="$app_password" <<'SQL'
CREATE ROLE teleconsult_app LOGIN PASSWORD :'app_password';
SQL
