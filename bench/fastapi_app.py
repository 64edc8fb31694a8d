"""The FastAPI peer of the benchmark: one route that parses the JSON body,
commits it as one SQLite row (WAL, synchronous = FULL) and answers 200, on
uvicorn (with uvloop and httptools), one process, no access log.

    bench/.venv-fastapi/bin/python bench/fastapi_app.py PORT DATABASE

The commit runs on the event loop, as a plain ``sqlite3`` call: handing it
to the thread pool (``run_in_threadpool``, one connection behind a lock) was
measured slower under the benchmark's load, 2,370 against 2,610 requests/s.
"""

import json
import sqlite3
import sys
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

SCHEMA = """CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL
)"""
INSERT = "INSERT INTO webhooks (channel, headers, body, received_at) VALUES (?, ?, ?, ?)"

app = FastAPI()
db = sqlite3.connect(sys.argv[2])
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = FULL")
db.execute(SCHEMA)


@app.post("/api/webhook/{channel}")
async def receive(channel: str, request: Request):
    body = await request.body()
    try:
        json.loads(body)
    except ValueError:
        return JSONResponse({"error": "invalid_json"}, status_code=422)
    with db:
        row = db.execute(INSERT, (channel, json.dumps(dict(request.headers)), body, time.time())).lastrowid
    return Response(b'{"status":"ok","id":%d}' % row, media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")
