#!/usr/bin/env python3
"""An ecommpay callback receiver for an app behind caddy-ecommpay.

Caddy has already verified the signature, refused forgeries and dropped
retries it delivered before. The app stores each event once, keyed by
X-Ecommpay-Event-Key, and answers 2xx only once it is stored: any other
answer makes ecommpay retry. Python 3 standard library only:

    APP_DB=/var/lib/shop/ecommpay-events.db APP_PORT=9000 python3 receiver.py
"""

import datetime
import json
import os
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DB = os.environ.get("APP_DB", "ecommpay-events.db")

SCHEMA = """CREATE TABLE IF NOT EXISTS ecommpay_events (
    event_key        TEXT PRIMARY KEY,
    payment_id       TEXT NOT NULL,
    payment_status   TEXT NOT NULL,
    operation_type   TEXT NOT NULL,
    operation_status TEXT NOT NULL,
    source           TEXT NOT NULL,
    body             TEXT NOT NULL,
    received_at      TEXT NOT NULL
)"""


def store(key, source, raw):
    """Stores the event once; returns True if it is new."""
    event = json.loads(raw)
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    payment = event.get("payment") or {}
    # A callback has one operation; a status event (X-Ecommpay-Source:
    # status) has a list of operations instead: take the last one.
    operation = event.get("operation") or (event.get("operations") or [{}])[-1]
    with sqlite3.connect(DB, timeout=10) as db:  # commits, or rolls back on error
        db.execute(SCHEMA)
        cur = db.execute(
            "INSERT INTO ecommpay_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_key) DO NOTHING",
            (key, str(payment.get("id", "")), str(payment.get("status", "")),
             str(operation.get("type", "")), str(operation.get("status", "")),
             source, raw.decode("utf-8"),
             datetime.datetime.now(datetime.timezone.utc).isoformat()))
        if cur.rowcount == 1:
            # A new event: act on it here, in the same transaction (mark the
            # order paid when payment.status is "success", show the QR code
            # of a display_data entry, send the customer to
            # redirect_data.url, ...).
            return True
    # A retry, or a replay from the console (X-Ecommpay-Replay: 1), has a
    # key already stored: nothing to do, and the answer is 200 all the same.
    return False


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        key = self.headers.get("X-Ecommpay-Event-Key", "")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if not key:
                raise ValueError("no X-Ecommpay-Event-Key: not sent by Caddy")
            store(key, self.headers.get("X-Ecommpay-Source", "callback"), raw)
        except ValueError:  # not JSON, or not from Caddy: nothing to store
            self.answer(400, b"bad request\n")
            return
        self.answer(200, b"OK\n")

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(os.environ.get("APP_PORT", "9000"))
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
