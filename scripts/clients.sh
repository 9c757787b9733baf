#!/usr/bin/env bash
# Every common DSQL client against `dsql-pgx local`, each run the way README's recipe for it
# says, with a table of which passed at the end. CI covers three of them (tests/clients.rs:
# AWS's Python connector with psycopg, AWS's Node connector, pgJDBC); this script is for a
# developer, for the rest: psql, pgcli, psycopg, psycopg2 and asyncpg with a boto3 token,
# AWS's Python connector in its psycopg2 and asyncpg flavours, its SQLAlchemy dialect and
# Django backend, node-postgres with @aws-sdk/dsql-signer, postgres.js.
#
# Usage: scripts/clients.sh            (installs pinned clients into target/clients-dev once)
# Needs python3 (with venv), node + npm, java + Debian's libpostgresql-jdbc-java, psql.
# asyncpg connects to the very name it checks the certificate for, so it needs the name to
# resolve: with the one /etc/hosts line README gives, it runs; without, it is reported as
# "needs the hosts line" (the script never edits /etc/hosts).
set -uo pipefail
cd "$(dirname "$0")/.."
dev=target/clients-dev

pip_pins=(
  'aurora-dsql-python-connector[asyncpg,psycopg,psycopg2]==0.2.7' 'aurora-dsql-sqlalchemy==1.3.0'
  'aurora-dsql-django==0.7.0' 'django==5.2.19' 'sqlalchemy==2.1.9' 'pgcli==4.7.1' 'asyncpg==0.32.0'
  'psycopg[binary]==3.3.9' 'psycopg2-binary==2.9.13' 'boto3==1.44.5'
)
npm_pins=(pg@8.23.1 postgres@3.4.9 @aws-sdk/dsql-signer@3.1142.0 @aws/aurora-dsql-node-postgres-connector@0.1.9)
stamp="${pip_pins[*]} ${npm_pins[*]}"
if [ "$(cat "$dev/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "clients: installing pinned clients into $dev"
  rm -rf "$dev" && mkdir -p "$dev/node"
  python3 -m venv "$dev/py" && "$dev/py/bin/pip" install -q --disable-pip-version-check "${pip_pins[@]}" || exit 1
  (cd "$dev/node" && npm install -s --no-audit --no-fund --no-save "${npm_pins[@]}") || exit 1
  echo "$stamp" >"$dev/.stamp"
fi
cargo build -q || exit 1
export PATH="$PWD/target/debug:$PWD/$dev/py/bin:$PATH" NODE_PATH="$PWD/$dev/node/node_modules"

# README's start: a private directory for the env file, wait for it with a bound.
env_dir=$(mktemp -d)
trap 'kill $local_pid 2>/dev/null; wait $local_pid 2>/dev/null; rm -rf "$env_dir"' EXIT
dsql-pgx local --env-file "$env_dir/env" 2>"$env_dir/local.log" & local_pid=$!
for _ in $(seq 600); do [ -e "$env_dir/env" ] && break; kill -0 $local_pid || break; sleep 0.1; done
. "$env_dir/env" || { cat "$env_dir/local.log"; exit 1; }
resolves=false
getent hosts "$CLUSTER_ENDPOINT" >/dev/null && resolves=true

results=()
check() { # check NAME COMMAND...: passes when the command prints a 26-character session id
  local name=$1 out; shift
  out=$("$@" 2>&1 | tail -n 1)
  if [[ $out =~ ^[a-z0-9]{26}$ ]]; then results+=("pass  $name"); else results+=("FAIL  $name: $out"); fi
}
needs_hosts() { # needs_hosts NAME COMMAND...: runs only where the endpoint's name resolves
  local name=$1; shift
  if $resolves; then check "$name" "$@"; else results+=("n/a   $name: needs the hosts line (README)"); fi
}
py() { python -c "$1"; }
js() { node -e "$1"; }
q='select sys.current_session_id()'

check "psql" bash -c "PGPASSWORD=\$(dsql-pgx token) psql -XAtc '$q'"
check "pgcli" bash -c "PGPASSWORD=\$(dsql-pgx token) pgcli --less-chatty -t -c '$q' | tr -d ' |'"
token_py='
import os, boto3
token = boto3.client("dsql", region_name=os.environ["REGION"]).generate_db_connect_admin_auth_token(
    os.environ["CLUSTER_ENDPOINT"], os.environ["REGION"])'
check "psycopg + boto3 token" py "$token_py
import psycopg
print(psycopg.connect(password=token).execute('$q').fetchone()[0])"
check "psycopg2 + boto3 token" py "$token_py
import psycopg2
c = psycopg2.connect(password=token).cursor(); c.execute('$q'); print(c.fetchone()[0])"
needs_hosts "asyncpg + boto3 token" py "$token_py
import asyncio, asyncpg
async def main():
    c = await asyncpg.connect(password=token)
    print(await c.fetchval('$q'))
asyncio.run(main())"
check "AWS Python connector (psycopg)" py "
import os, aurora_dsql_psycopg as dsql
print(dsql.connect(host=os.environ['CLUSTER_ENDPOINT']).execute('$q').fetchone()[0])"
check "AWS Python connector (psycopg2)" py "
import os, aurora_dsql_psycopg2 as dsql
c = dsql.connect(host=os.environ['CLUSTER_ENDPOINT']).cursor(); c.execute('$q'); print(c.fetchone()[0])"
needs_hosts "AWS Python connector (asyncpg)" py "
import asyncio, os, aurora_dsql_asyncpg as dsql
async def main():
    c = await dsql.connect(host=os.environ['CLUSTER_ENDPOINT'])
    print(await c.fetchval('$q'))
asyncio.run(main())"
check "SQLAlchemy (aurora-dsql-sqlalchemy)" py "
import os, sqlalchemy
from aurora_dsql_sqlalchemy import create_dsql_engine
engine = create_dsql_engine(host=os.environ['CLUSTER_ENDPOINT'], user='admin', sslrootcert=os.environ['PGSSLROOTCERT'])
with engine.connect() as c:
    print(c.execute(sqlalchemy.text('$q')).scalar())"
check "Django (aurora-dsql-django)" py "
import os, django
from django.conf import settings
settings.configure(DATABASES={'default': {'ENGINE': 'aurora_dsql_django', 'HOST': os.environ['CLUSTER_ENDPOINT'],
    'USER': 'admin', 'NAME': 'postgres', 'OPTIONS': {'sslmode': 'verify-full', 'sslrootcert': os.environ['PGSSLROOTCERT']}}})
django.setup()
from django.db import connection
with connection.cursor() as c:
    c.execute('$q'); print(c.fetchone()[0])"
token_js='
const fs = require("node:fs");
const { DsqlSigner } = require("@aws-sdk/dsql-signer");
const env = process.env;
const ssl = { ca: fs.readFileSync(env.PGSSLROOTCERT), servername: env.CLUSTER_ENDPOINT };
const token = () => new DsqlSigner({ hostname: env.CLUSTER_ENDPOINT, region: env.REGION }).getDbConnectAdminAuthToken();'
check "node-postgres + @aws-sdk/dsql-signer" js "$token_js
(async () => {
  const pg = require('pg');
  const c = new pg.Client({ host: env.DB_HOST, port: +env.DB_PORT, user: 'admin', database: 'postgres', password: await token(), ssl });
  await c.connect();
  console.log((await c.query('$q as id')).rows[0].id);
  await c.end();
})();"
check "postgres.js + @aws-sdk/dsql-signer" js "$token_js
(async () => {
  const sql = require('postgres')({ host: env.DB_HOST, port: +env.DB_PORT, username: 'admin', database: 'postgres', password: token, ssl });
  console.log((await sql.unsafe('$q as id'))[0].id);
  await sql.end();
})();"
check "AWS Node connector" bash -c "node tests/clients/node_postgres_connector.cjs | sed -n 's/^session //p'"
echo "$DB_HOST $CLUSTER_ENDPOINT" >"$env_dir/hosts"
check "pgJDBC" bash -c "PGPASSWORD=\$(dsql-pgx token) DSQL_BAD_TOKEN=x java -Djdk.net.hosts.file=$env_dir/hosts -cp /usr/share/java/postgresql.jar tests/clients/Jdbc.java 2>&1 | sed -n 's/^session //p'"

printf '%s\n' "${results[@]}"
! printf '%s\n' "${results[@]}" | grep -q '^FAIL'
