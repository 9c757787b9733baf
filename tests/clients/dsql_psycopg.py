"""AWS's Python DSQL connector (aurora-dsql-python-connector) with psycopg 3, against the
endpoint whose exports (`dsql-pgx local --env-file`) are in the environment.

Prints `session <id>`, `rows <n>` and `refused <SQLSTATE> <message>` for tests/clients.rs.
The connection takes only what README's recipe gives it: the endpoint's name (which the
connector signs for and reads the region from); libpq's PGHOSTADDR, PGPORT, PGSSLMODE and
PGSSLROOTCERT from the environment do the rest.
"""

import os
import sys

import aurora_dsql_psycopg as dsql
import psycopg


def connect():
    return dsql.connect(host=os.environ["CLUSTER_ENDPOINT"], autocommit=True)


def main():
    with connect() as conn:
        (session,) = conn.execute("select sys.current_session_id()").fetchone()
        print("session", session)
        with conn.transaction():  # one DDL statement, alone in its transaction
            conn.execute("create table py_items (id int primary key, name text not null)")
        with conn.transaction():
            conn.execute("insert into py_items values (%s, %s), (%s, %s)", (1, "a", 2, "b"))
            conn.execute("update py_items set name = 'c' where id = %s", (2,))
        (rows,) = conn.execute("select count(*) from py_items where name in ('a', 'c')").fetchone()
        print("rows", rows)

    # The connector signs with whatever credentials boto3 finds: a wrong secret key
    # gives a token the endpoint refuses.
    os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong" + os.environ["AWS_SECRET_ACCESS_KEY"][5:]
    try:
        connect().close()
    except psycopg.OperationalError as e:
        # libpq reports a refused login as text only, without its SQLSTATE.
        message = str(e).strip().splitlines()[-1].split("FATAL:", 1)[-1].strip()
        print("refused", e.sqlstate or "-", message)
        return 0
    print("a token signed with the wrong key was accepted", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
