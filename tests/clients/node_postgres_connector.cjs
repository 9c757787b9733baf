// AWS's Node DSQL connector (@aws/aurora-dsql-node-postgres-connector, over node-postgres)
// against the endpoint whose exports (`dsql-pgx local --env-file`) are in the environment.
//
// Prints `session <id>`, `rows <n>` and `refused <SQLSTATE> <message>` for tests/clients.rs.
// node-postgres has no hostaddr: it connects to the host it names in TLS. The endpoint's
// name resolves nowhere, so `stream` hands it a socket that connects to DB_HOST instead
// (README's recipe); TLS still sends and verifies CLUSTER_ENDPOINT.
"use strict";
const fs = require("node:fs");
const net = require("node:net");
const { AuroraDSQLClient } = require("@aws/aurora-dsql-node-postgres-connector");

function toDbHost() {
  const socket = new net.Socket();
  const connect = socket.connect.bind(socket);
  socket.connect = (port) => connect(port, process.env.DB_HOST);
  return socket;
}

function client(extra = {}) {
  return new AuroraDSQLClient({
    host: process.env.CLUSTER_ENDPOINT,
    port: Number(process.env.DB_PORT),
    ssl: { ca: fs.readFileSync(process.env.PGSSLROOTCERT) },
    stream: toDbHost,
    ...extra,
  });
}

async function main() {
  const c = client();
  await c.connect();
  const session = await c.query("select sys.current_session_id() as id");
  console.log("session", session.rows[0].id);
  await c.query("begin"); // one DDL statement, alone in its transaction
  await c.query("create table node_items (id int primary key, name text not null)");
  await c.query("commit");
  await c.transaction(async (tx) => {
    await tx.query("insert into node_items values ($1, $2), ($3, $4)", [1, "a", 2, "b"]);
    await tx.query("update node_items set name = 'c' where id = $1", [2]);
  });
  const rows = await c.query("select count(*)::int as n from node_items where name in ('a', 'c')");
  console.log("rows", rows.rows[0].n);
  await c.end();

  // Credentials with the wrong secret key sign a token the endpoint refuses.
  const bad = client({
    customCredentialsProvider: async () => ({
      accessKeyId: process.env.AWS_ACCESS_KEY_ID,
      secretAccessKey: "wrong" + process.env.AWS_SECRET_ACCESS_KEY.slice(5),
    }),
  });
  try {
    await bad.connect();
  } catch (e) {
    console.log("refused", e.code || "-", e.message);
    return 0;
  }
  await bad.end();
  console.error("a token signed with the wrong key was accepted");
  return 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`node connector: ${e.message}`);
    process.exit(1);
  },
);
