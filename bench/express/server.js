// The Express peer of the benchmark: one route that parses the JSON body,
// commits it as one SQLite row (WAL, synchronous = FULL) with better-sqlite3
// and answers 200, one process, no access log.
//
//     node bench/express/server.js PORT DATABASE

const express = require("express");
const Database = require("better-sqlite3");

const [port, path] = process.argv.slice(2);
const db = new Database(path);
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
db.exec(`CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL
)`);
const insert = db.prepare("INSERT INTO webhooks (channel, headers, body, received_at) VALUES (?, ?, ?, ?)");

const app = express();
app.disable("x-powered-by");
app.disable("etag");
app.post("/api/webhook/:channel", express.raw({ type: () => true, limit: "256kb" }), (req, res) => {
  try {
    JSON.parse(req.body);
  } catch {
    return res.status(422).json({ error: "invalid_json" });
  }
  const row = insert.run(req.params.channel, JSON.stringify(req.headers), req.body, Date.now() / 1000);
  res.type("application/json").send(`{"status":"ok","id":${row.lastInsertRowid}}`);
});
app.listen(Number(port), "127.0.0.1");

// Every answered row is committed already: stopping loses nothing.
process.on("SIGTERM", () => {
  db.close();
  process.exit(0);
});
