#!/usr/bin/env python3
"""A small merchant app used by the end-to-end tests. Python 3 standard library only.

It never signs anything itself: Payment Page URLs come from Caddy's internal
listener, and Gate requests go out unsigned through Caddy, which signs them.
It does verify every callback Caddy forwards, with its own implementation of
the ecommpay signature (PHP SDK rules) and a secret the test hands it.

Environment:
  SHOP_PORT             port to listen on (127.0.0.1); 0 or unset = any free port
  SHOP_CADDY_INTERNAL   base URL of Caddy's internal listener, e.g. http://127.0.0.1:8001
  SHOP_VERIFY_SECRET    secret(s) used only to VERIFY forwarded callbacks; during a
                        key rotation a comma-separated list (current first)
  SHOP_STATE_FILE       optional JSON file that keeps the state across restarts
  SHOP_START_DOWN       "1" = start in the down state (answer 500 to callbacks)

HTTP API:
  POST /callback              callback forwarded by Caddy
  GET  /state                 everything the shop saw, as JSON
  GET  /qr/<payment_id>       the last QR PNG received for the payment (from qr_img)
  POST /admin/down | /admin/up | /admin/slow?ms=N | /admin/ok?status=2xx
  POST /buy                   {"method","payment_id","amount","currency",...} -> Gate sale via Caddy
  POST /refund                {"method","payment_id","amount","currency","generic":bool} -> Gate refund via Caddy
  POST /checkout              {"payment_id","amount","currency","method","extra":{...}} -> Payment Page URL via Caddy

Self-test: shop.py --selftest VECTORS.json checks the signer against the
conformance vectors and exits non-zero on any mismatch.
"""

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ---------------------------------------------------------------------------
# ecommpay signature, PHP SDK rules


def _is_digit(c):
    return 48 <= c <= 57


def _is_space(c):
    return c == 32 or 9 <= c <= 13


def strnatcmp(a, b):
    """PHP 8 strnatcmp_ex (case sensitive) on bytes."""
    if isinstance(a, str):
        a = a.encode("utf-8")
    if isinstance(b, str):
        b = b.encode("utf-8")
    la, lb = len(a), len(b)
    if la == 0 or lb == 0:
        return 0 if la == lb else (1 if la > lb else -1)

    def at(s, i):
        return s[i] if i < len(s) else 0

    ai = bi = 0
    leading = True
    while True:
        ca, cb = at(a, ai), at(b, bi)
        while leading and ca == 48 and ai + 1 < la and _is_digit(a[ai + 1]):
            ai += 1
            ca = a[ai]
        while leading and cb == 48 and bi + 1 < lb and _is_digit(b[bi + 1]):
            bi += 1
            cb = b[bi]
        leading = False
        while _is_space(ca):
            ai += 1
            ca = at(a, ai)
        while _is_space(cb):
            bi += 1
            cb = at(b, bi)
        if _is_digit(ca) and _is_digit(cb):
            fractional = ca == 48 or cb == 48
            bias = 0
            result = None
            while True:
                ad = ai < la and _is_digit(a[ai])
                bd = bi < lb and _is_digit(b[bi])
                if not ad and not bd:
                    result = 0 if fractional else bias
                    break
                if not ad:
                    result = -1
                    break
                if not bd:
                    result = 1
                    break
                if a[ai] != b[bi]:
                    d = -1 if a[ai] < b[bi] else 1
                    if fractional:
                        result = d
                        break
                    if bias == 0:
                        bias = d
                ai += 1
                bi += 1
            if result != 0:
                return result
            if ai == la and bi == lb:
                return 0
            if ai == la:
                return -1
            if bi == lb:
                return 1
            ca, cb = a[ai], b[bi]
        if ca < cb:
            return -1
        if ca > cb:
            return 1
        ai += 1
        bi += 1
        if ai >= la and bi >= lb:
            return 0
        if ai >= la:
            return -1
        if bi >= lb:
            return 1


def php_float(f):
    """PHP (string)$float with precision 14."""
    if f != f:
        return "NAN"
    if f in (float("inf"), float("-inf")):
        return "INF" if f > 0 else "-INF"
    s = "%.13e" % f
    neg = s.startswith("-")
    s = s.lstrip("-")
    mant, exp = s.split("e")
    digits = mant.replace(".", "").rstrip("0")
    sign = "-" if neg else ""
    if not digits:
        return sign + "0"
    decpt = int(exp) + 1
    if decpt < -3 or decpt > 14:
        m = digits[0] + "." + (digits[1:] or "0")
        e = decpt - 1
        return sign + m + "E" + ("-" if e < 0 else "+") + str(abs(e))
    if decpt <= 0:
        return sign + "0." + "0" * (-decpt) + digits
    if len(digits) <= decpt:
        return sign + digits + "0" * (decpt - len(digits))
    return sign + digits[:decpt] + "." + digits[decpt:]


class _Num:
    """A JSON number literal kept as text until rendering."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text

    def render(self):
        t = self.text
        if not any(c in t for c in ".eE"):
            n = int(t)
            if -(2**63) <= n < 2**63:
                return str(n)
        return php_float(float(t))


def parse_json(raw):
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8")
    return json.loads(raw, parse_int=_Num, parse_float=_Num,
                      parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def _render(v):
    if v is None:
        return ""
    if v is True:
        return "1"
    if v is False:
        return "0"
    if isinstance(v, _Num):
        return v.render()
    return str(v)


def _flatten(prefix, v, strip_signature, out):
    if isinstance(v, dict):
        for k, val in v.items():
            if k == "frame_mode" or (strip_signature and k == "signature"):
                continue
            seg = k.replace(":", "::")
            _flatten(seg if prefix == "" else prefix + ":" + seg, val, strip_signature, out)
    elif isinstance(v, list):
        for i, val in enumerate(v):
            _flatten(str(i) if prefix == "" else prefix + ":" + str(i), val, strip_signature, out)
    else:
        out.append((prefix, _render(v)))


def canonical(v, strip_signature):
    import functools
    items = []
    _flatten("", v, strip_signature, items)
    # sorted() is stable, so ties keep document order like PHP 8.
    items = sorted(items, key=functools.cmp_to_key(lambda x, y: strnatcmp(x[0], y[0])))
    return ";".join(p + ":" + val for p, val in items)


def sign(canon, secret):
    mac = hmac.new(secret.encode("utf-8"), canon.encode("utf-8"), hashlib.sha512)
    return base64.b64encode(mac.digest()).decode("ascii")


def embedded_signature(v):
    if not isinstance(v, dict):
        return None
    if "signature" in v:
        s = v["signature"]
        return s if isinstance(s, str) else None
    g = v.get("general")
    if isinstance(g, dict) and "signature" in g:
        s = g["signature"]
        return s if isinstance(s, str) else None
    return None


def verify_callback(raw, secret):
    """Returns (ok, reason, parsed)."""
    try:
        v = parse_json(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return False, "malformed JSON: %s" % e, None
    sig = embedded_signature(v)
    if not sig:
        return False, "no signature", v
    want = sign(canonical(v, True), secret)
    if not hmac.compare_digest(want.encode(), sig.encode()):
        return False, "signature mismatch", v
    return True, "", v


def selftest(path):
    with open(path, "rb") as f:
        vectors = json.load(f)
    bad = n = 0
    for e in vectors:
        if e.get("type") == "sign":
            n += 1
            canon = canonical(parse_json(e["params_json"]), False)
            if canon != e["canonical"] or sign(canon, e["secret"]) != e["signature"]:
                bad += 1
                print("FAIL sign %s\n got %r\nwant %r" % (e["name"], canon, e["canonical"]))
        elif e.get("type") == "callback":
            n += 1
            ok, reason, _ = verify_callback(e["raw_body"].encode("utf-8"), e["secret"])
            if ok != e["expect_valid"]:
                bad += 1
                print("FAIL callback %s: ok=%s (%s)" % (e["name"], ok, reason))
    print("selftest: %d vectors, %d failed" % (n, bad))
    return 0 if bad == 0 and n > 0 else 1


def to_plain(v):
    """Parsed JSON (with _Num) back to plain Python values for the state dump."""
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_plain(x) for x in v]
    if isinstance(v, _Num):
        t = v.text
        try:
            return int(t) if not any(c in t for c in ".eE") else float(t)
        except ValueError:
            return t
    return v


# ---------------------------------------------------------------------------
# the shop

LOCK = threading.Lock()
STATE = {
    "events": {},          # event key -> record
    "event_order": [],     # keys in first-arrival order
    "payments": {},        # payment id -> summary
    "rejected": [],        # callbacks the shop refused (bad signature, no key, ...)
    "callback_posts": 0,   # every POST /callback, accepted or not
    "answered_down": 0,    # callbacks answered 500 while down
    "outgoing": [],        # requests the shop sent to Caddy, with answers
    "restarts": 0,
}
QR_PNG = {}                # payment id -> PNG bytes (kept out of /state)
MODE = {"down": os.environ.get("SHOP_START_DOWN") == "1", "slow_ms": 0, "ok_status": 200}
SECRETS = [x for x in os.environ.get("SHOP_VERIFY_SECRET", "").split(",") if x]
STATE_FILE = os.environ.get("SHOP_STATE_FILE", "")
CADDY_INTERNAL = os.environ.get("SHOP_CADDY_INTERNAL", "")


def save_state():
    if not STATE_FILE:
        return
    tmp = STATE_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"state": STATE, "qr": {k: base64.b64encode(v).decode() for k, v in QR_PNG.items()}}, f)
    os.replace(tmp, STATE_FILE)


def load_state():
    if not STATE_FILE or not os.path.exists(STATE_FILE):
        return
    with open(STATE_FILE) as f:
        saved = json.load(f)
    STATE.update(saved["state"])
    STATE["restarts"] += 1
    for k, v in saved.get("qr", {}).items():
        QR_PNG[k] = base64.b64decode(v)


def _loopback_target(base):
    u = urllib.parse.urlsplit(base)
    if u.scheme != "http" or not u.hostname or not ipaddress.ip_address(u.hostname).is_loopback:
        raise ValueError("refusing non-loopback target %r" % base)
    return u.hostname, u.port or 80


def caddy_request(method, path, body=None):
    """One request to Caddy's internal listener; returns (status, headers, parsed-or-text)."""
    host, port = _loopback_target(CADDY_INTERNAL)
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        rec = {"method": method, "path": path, "body": body, "status": resp.status,
               "headers": dict(resp.getheaders()), "answer": parsed}
        with LOCK:
            STATE["outgoing"].append(rec)
            save_state()
        return rec
    finally:
        conn.close()


def payment_summary(pid):
    return STATE["payments"].setdefault(pid, {"statuses": [], "events": [], "qr": None,
                                              "qr_url": None, "redirect": None})


def handle_callback(handler, raw):
    key = handler.headers.get("X-Ecommpay-Event-Key", "")
    project = handler.headers.get("X-Ecommpay-Project-Id", "")
    with LOCK:
        STATE["callback_posts"] += 1
        if MODE["down"]:
            STATE["answered_down"] += 1
            save_state()
            return 500, {"error": "shop is down"}
    if MODE["slow_ms"]:
        time.sleep(MODE["slow_ms"] / 1000.0)
    ok, reason, parsed, secret_index = False, "no secret configured", None, -1
    for i, secret in enumerate(SECRETS):
        ok, reason, parsed = verify_callback(raw, secret)
        if ok:
            secret_index = i
            break
    with LOCK:
        if not key:
            ok, reason = False, reason or "missing X-Ecommpay-Event-Key"
        if not ok:
            STATE["rejected"].append({"reason": reason, "key": key,
                                      "body": raw.decode("utf-8", "replace")})
            save_state()
            return 400, {"error": reason}
        if key in STATE["events"]:
            ev = STATE["events"][key]
            if handler.headers.get("X-Ecommpay-Replay") == "1":
                ev["replays"] = ev.get("replays", 0) + 1
                save_state()
                return MODE["ok_status"], {"stored": False, "replay": True}
            ev["count"] += 1
            ev["arrivals"].append(time.time())
            save_state()
            return MODE["ok_status"], {"stored": False, "count": ev["count"]}
        body = to_plain(parsed)
        payment = body.get("payment") or {}
        op = body.get("operation") or {}
        pid = payment.get("id") or (body.get("general") or {}).get("payment_id") or ""
        ev = {
            "key": key,
            "count": 1,
            "arrivals": [time.time()],
            "project_header": project,
            "forwarded_headers": {k: v for k, v in handler.headers.items()},
            "path": handler.path,
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
            "verified": True,
            "secret_index": secret_index,
            "payment_id": pid,
            "payment_status": payment.get("status"),
            "operation_id": op.get("id"),
            "operation_type": op.get("type"),
            "operation_status": op.get("status"),
            "body": body,
        }
        STATE["events"][key] = ev
        STATE["event_order"].append(key)
        ps = payment_summary(pid)
        ps["events"].append(key)
        ps["statuses"].append(payment.get("status"))
        ps["last_status"] = payment.get("status")
        for entry in body.get("display_data") or []:
            if not isinstance(entry, dict):
                continue
            if entry.get("type") == "qr_img":
                try:
                    QR_PNG[pid] = base64.b64decode(entry.get("data") or "", validate=True)
                    ps["qr"] = {"source": entry.get("source"), "title": entry.get("title"),
                                "png_bytes": len(QR_PNG[pid])}
                except ValueError as e:
                    ps["qr"] = {"error": "bad base64: %s" % e}
            elif entry.get("type") == "qr_url":
                ps["qr_url"] = entry.get("data")
            elif entry.get("type") == "qr_data":
                ps["qr_data"] = entry.get("data")
        if body.get("redirect_data") is not None:
            ps["redirect"] = body.get("redirect_data")
        save_state()
        return MODE["ok_status"], {"stored": True}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shop/1"

    def log_message(self, fmt, *args):
        if self.path == "/state":
            return
        sys.stderr.write("shop: %s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))

    def _send(self, status, obj=None, ctype="application/json", raw=None):
        data = raw if raw is not None else json.dumps(obj if obj is not None else {}).encode()
        if status in (204, 304):
            self.send_response(status)
            self.end_headers()
            return
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self):
        path, _, _ = self.path.partition("?")
        if path == "/state":
            with LOCK:
                out = json.dumps({**STATE, "mode": MODE}).encode()
            return self._send(200, raw=out)
        if path.startswith("/qr/"):
            pid = urllib.parse.unquote(path[len("/qr/"):])
            with LOCK:
                png = QR_PNG.get(pid)
            if png is None:
                return self._send(404, {"error": "no QR for %s" % pid})
            return self._send(200, ctype="image/png", raw=png)
        if path == "/health":
            return self._send(200, {"ok": True})
        return self._send(404, {"error": "not found"})

    def do_POST(self):
        path, _, query = self.path.partition("?")
        raw = self._body()
        if path == "/callback":
            status, obj = handle_callback(self, raw)
            return self._send(status, obj)
        if path == "/admin/down":
            MODE["down"] = True
            return self._send(200, MODE)
        if path == "/admin/up":
            MODE["down"] = False
            return self._send(200, MODE)
        if path == "/admin/ok":
            q = urllib.parse.parse_qs(query)
            MODE["ok_status"] = int((q.get("status") or ["200"])[0])
            return self._send(200, MODE)
        if path == "/admin/slow":
            q = urllib.parse.parse_qs(query)
            MODE["slow_ms"] = int((q.get("ms") or ["0"])[0])
            return self._send(200, MODE)
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, {"error": "bad JSON"})
        if path == "/buy":
            return self._send(200, self.buy(req))
        if path == "/refund":
            return self._send(200, self.refund(req))
        if path == "/checkout":
            return self._send(200, self.checkout(req))
        return self._send(404, {"error": "not found"})

    @staticmethod
    def buy(req):
        method = req["method"]
        general = {"payment_id": req["payment_id"]}
        if req.get("include_project_id"):
            general["project_id"] = 210
        if req.get("stale_signature"):
            general["signature"] = "c3RhbGUgc2lnbmF0dXJl"
        body = {
            "general": general,
            "customer": {"id": req.get("customer_id", "customer123"), "ip_address": "192.0.2.10",
                         "email": "customer@example.com", "phone": "19121234567"},
            "payment": {"amount": req["amount"], "currency": req["currency"],
                        "description": req.get("description", "order " + req["payment_id"])},
            "return_url": {"default": "http://127.0.0.1/return"},
        }
        return caddy_request("POST", "/v2/payment/wallet/%s/sale" % method, body)

    @staticmethod
    def refund(req):
        body = {
            "general": {"payment_id": req["payment_id"]},
            "customer": {"ip_address": "192.0.2.10"},
            "payment": {"description": req.get("description", "refund " + req["payment_id"])},
        }
        if "amount" in req:
            body["payment"]["amount"] = req["amount"]
        if "currency" in req:
            body["payment"]["currency"] = req["currency"]
        if req.get("generic"):
            path = "/v2/payment/refund"
        else:
            path = "/v2/payment/wallet/%s/refund" % req["method"]
        return caddy_request("POST", path, body)

    @staticmethod
    def checkout(req):
        params = {
            "payment_id": req["payment_id"],
            "payment_amount": str(req["amount"]),
            "payment_currency": req["currency"],
            "customer_id": req.get("customer_id", "customer123"),
        }
        if req.get("method"):
            params["force_payment_method"] = req["method"]
        for k, v in (req.get("extra") or {}).items():
            params[k] = v
        for k in req.get("drop", []):
            params.pop(k, None)
        return caddy_request("GET", "/payment-page?" + urllib.parse.urlencode(params))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--selftest":
        sys.exit(selftest(sys.argv[2]))
    load_state()
    port = int(os.environ.get("SHOP_PORT") or 0)
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    print("SHOP LISTENING 127.0.0.1:%d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
