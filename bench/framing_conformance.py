#!/usr/bin/env python3
"""HTTP/1.1 framing conformance: the same raw bytes through Switchyard,
HAProxy and nginx, and what each forwarded, answered or closed.

Every proxy forwards to one raw TCP upstream run here, which records the
bytes it receives exactly and answers each request with those bytes (so
the client also sees what was forwarded). Request cases send ambiguous or
invalid requests; response cases make the upstream answer with ambiguous
or invalid responses and record what the client receives, and whether the
proxy uses that upstream connection again.

    python3 bench/framing_conformance.py                # all cases, writes docs/framing-conformance.md
    python3 bench/framing_conformance.py --cases cl_te,dup_host --print
    SWITCHYARD_BIN=target/debug/switchyard python3 bench/framing_conformance.py

Switchyard: SWITCHYARD_BIN, else target/release/switchyard if present, else
target/debug/switchyard. HAProxy and nginx come from PATH (Debian's 2.6 and
1.22). Configs are generated into a temp dir, everything listens on
loopback ports picked here, every wait is bounded, and every process
started here is stopped by its PID. tests/framing.rs runs the same cases
against Switchyard alone, with assertions, in `cargo test`.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def switchyard_bin():
    if os.environ.get("SWITCHYARD_BIN"):
        return Path(os.environ["SWITCHYARD_BIN"])
    release = ROOT / "target" / "release" / "switchyard"
    return release if release.exists() else ROOT / "target" / "debug" / "switchyard"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# === a strict HTTP/1.1 parser, for what the upstream and the client see ===

TOKEN = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ParseError(Exception):
    pass


@dataclass
class Msg:
    """One parsed message. `anomalies` are what a strict RFC 9112 parser
    objects to but this one could still read (a proxy forwarded them)."""

    start: bytes
    fields: list  # [(name lowercased str, value bytes)]
    raw: bytes = b""
    body: bytes = b""
    framing: str = "-"
    trailers: list = field(default_factory=list)
    anomalies: list = field(default_factory=list)
    status: int = 0
    method: str = ""
    target: str = ""
    version: str = ""

    def get_all(self, name):
        return [v for n, v in self.fields if n == name]


def split_head(buf):
    """(head lines, length of the head, empty lines skipped before the
    start line) or None when incomplete. Lines may end in CRLF or a bare
    LF (reported as an anomaly by parse_head)."""
    i, skipped = 0, 0
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line
    # before a request line.
    while buf[i:i + 2] == b"\r\n" or buf[i:i + 1] == b"\n":
        i += 2 if buf[i:i + 1] == b"\r" else 1
        skipped += 1
    lines = []
    while True:
        j = buf.find(b"\n", i)
        if j < 0:
            return None
        line = buf[i:j]
        i = j + 1
        if line in (b"", b"\r"):
            return lines, i, skipped
        lines.append(line)


def parse_head(buf, request):
    """Parses a head off `buf`: (Msg without body, head length) or None."""
    split = split_head(buf)
    if split is None:
        return None
    lines, n, skipped = split
    anomalies = ["empty line before start"] if skipped else []
    clean = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            anomalies.append("bare LF")
        if b"\r" in line:
            anomalies.append("bare CR")
        clean.append(line)
    if not clean:
        raise ParseError("no start line")
    start, rest = clean[0], clean[1:]
    msg = Msg(start=start, fields=[], raw=buf[:n], anomalies=anomalies)
    if request:
        parts = start.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ParseError(f"request line {start!r}")
        msg.method, msg.target, msg.version = (p.decode("latin-1") for p in parts)
    else:
        m = re.match(rb"^HTTP/(1\.[01]) (\d{3})(?: .*)?$", start, re.S)
        if not m:
            raise ParseError(f"status line {start!r}")
        msg.version, msg.status = "HTTP/" + m.group(1).decode(), int(m.group(2))
    for line in rest:
        if line[:1] in (b" ", b"\t"):
            if not msg.fields:
                raise ParseError("whitespace before the first field")
            anomalies.append("obs-fold")
            name, value = msg.fields[-1]
            msg.fields[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        if b":" not in line:
            raise ParseError(f"field without colon {line!r}")
        name, value = line.split(b":", 1)
        if name != name.rstrip(b" \t"):
            anomalies.append("space before colon")
            name = name.rstrip(b" \t")
        if not name or any(b not in TOKEN for b in name):
            anomalies.append(f"bad name {name!r}")
        value = value.strip(b" \t")
        if b"\x00" in value:
            anomalies.append("NUL in value")
        elif any(b < 0x20 and b != 0x09 or b == 0x7F for b in value):
            anomalies.append("CTL in value")
        msg.fields.append((name.decode("latin-1").lower(), value))
    return msg, n


def framing_of(msg, request, head_request=False):
    """('length', n) | ('chunked', None) | ('close', None), per RFC 9112
    §6.3, noting what a strict recipient would object to."""
    te = [c.strip().lower() for v in msg.get_all("transfer-encoding") for c in v.split(b",") if c.strip()]
    cl = msg.get_all("content-length")
    if not request and (head_request or msg.status in (204, 304) or 100 <= msg.status < 200):
        return ("length", 0)
    if te:
        if cl:
            msg.anomalies.append("CL+TE")
        if msg.version == "HTTP/1.0":
            msg.anomalies.append("TE in HTTP/1.0")
        if te.count(b"chunked") > 1:
            msg.anomalies.append("chunked twice")
        if te != [b"chunked"]:
            msg.anomalies.append("TE " + b", ".join(te).decode("latin-1"))
        if te[-1] == b"chunked":
            return ("chunked", None)
        if request:
            raise ParseError("request TE without final chunked")
        return ("close", None)
    if cl:
        if len(cl) > 1:
            msg.anomalies.append("CL x%d" % len(cl))
        values = [p.strip() for v in cl for p in v.split(b",")]
        if len(values) > len(cl):
            msg.anomalies.append("CL list")
        if not all(re.fullmatch(rb"\d+", v) for v in values):
            raise ParseError(f"bad Content-Length {cl!r}")
        if len(set(int(v) for v in values)) != 1:
            raise ParseError(f"conflicting Content-Length {cl!r}")
        return ("length", int(values[0]))
    return ("length", 0) if request else ("close", None)


def parse_chunked(buf, msg):
    """Decodes a chunked body strictly: (body, consumed) or None."""
    i, body = 0, b""
    while True:
        j = buf.find(b"\n", i)
        if j < 0:
            return None
        line = buf[i:j]
        if not line.endswith(b"\r"):
            raise ParseError("chunk line without CR")
        line = line[:-1]
        m = re.fullmatch(rb"([0-9A-Fa-f]+)[ \t]*(;.*)?", line, re.S)
        if not m:
            raise ParseError(f"chunk size {line!r}")
        if m.group(2) and "chunk ext" not in msg.anomalies:
            msg.anomalies.append("chunk ext")
        size = int(m.group(1), 16)
        i = j + 1
        if size == 0:
            break
        if len(buf) < i + size + 2:
            return None
        body += buf[i:i + size]
        if buf[i + size:i + size + 2] != b"\r\n":
            raise ParseError("chunk data not followed by CRLF")
        i += size + 2
    while True:
        j = buf.find(b"\n", i)
        if j < 0:
            return None
        line = buf[i:j].rstrip(b"\r")
        i = j + 1
        if not line:
            return body, i
        msg.trailers.append(line)


def parse_message(buf, request, eof=False, head_request=False):
    """('need', None, 0) | ('ok', Msg, consumed); raises ParseError."""
    head = parse_head(buf, request)
    if head is None:
        return "need", None, 0
    msg, n = head
    kind, length = framing_of(msg, request, head_request)
    rest = buf[n:]
    if kind == "length":
        if len(rest) < length:
            return "need", None, 0
        msg.body, used = rest[:length], length
        msg.framing = f"CL {length}" if msg.get_all("content-length") else "-"
    elif kind == "chunked":
        got = parse_chunked(rest, msg)
        if got is None:
            return "need", None, 0
        msg.body, used = got
        msg.framing = "chunked"
    else:
        if not eof:
            return "need", None, 0
        msg.body, used = rest, len(rest)
        msg.framing = "close"
    msg.raw = buf[:n + used]
    return "ok", msg, n + used


def esc(b, limit=24):
    s = "".join(chr(c) if 0x20 <= c < 0x7F and c not in (0x22, 0x5C) else
                {0x0D: "\\r", 0x0A: "\\n", 0x22: '\\"', 0x5C: "\\\\"}.get(c, f"\\x{c:02x}") for c in b)
    return s if len(s) <= limit else s[: limit - 1] + "…"


# === the upstream ===

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


@dataclass
class Seen:
    """One request the upstream parsed (or failed to), on connection `conn`."""

    conn: int
    msg: Msg = None
    error: str = ""


class Upstream:
    """A raw HTTP/1.1 server on loopback, scripted per case; records every
    byte received, parses requests strictly, and answers each with the
    bytes of that request (`echo`), or with a case's raw response."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.next_conn = 0
        self.case = None
        self.seen = []
        self.answered = 0
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def reset(self, case):
        """Closes every open connection (so no proxy carries a pooled one
        into the next case) and starts recording for `case`."""
        with self.lock:
            conns, self.conns = self.conns, []
            self.case, self.seen, self.answered = case, [], 0
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def accept_loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
                cid = self.next_conn
                self.next_conn += 1
            threading.Thread(target=self.serve, args=(conn, cid), daemon=True).start()

    def serve(self, conn, cid):
        # In response cases an idle upstream connection closes after 1 s,
        # so a proxy that reads a response until close (an invalid length,
        # a 1xx it takes for final) shows what it then sent the client.
        case = self.case
        conn.settimeout(1.0 if case and case.response_side else 5)
        buf, eof, early_sent = b"", False, False
        try:
            while True:
                case = self.case
                try:
                    status, msg, n = parse_message(buf, request=True, eof=eof)
                except ParseError as e:
                    with self.lock:
                        self.seen.append(Seen(cid, error=f"{e}: {esc(buf, 60)}"))
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                if status == "need":
                    if case and case.upstream == "early" and not early_sent and parse_head(buf, True):
                        # Answer before reading the body, then read it.
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                        early_sent = True
                    if eof:
                        return
                    data = conn.recv(65536)
                    if not data:
                        eof = True
                        if not buf:
                            return
                    buf += data
                    continue
                buf = buf[n:]
                with self.lock:
                    self.seen.append(Seen(cid, msg))
                    first = self.answered == 0
                    self.answered += 1
                if early_sent:
                    early_sent = False
                    continue
                if case and case.respond is not None and first:
                    conn.sendall(case.respond)
                    if case.upstream == "tunnel":
                        while (data := conn.recv(65536)):
                            conn.sendall(data)
                        return
                    if case.upstream == "close":
                        return
                    continue
                close = (msg.version == "HTTP/1.0"
                         and not any(b"keep-alive" in v.lower() for v in msg.get_all("connection"))) \
                    or any(b"close" in v.lower() for v in msg.get_all("connection"))
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Length: {len(msg.raw)}\r\nX-Upstream: c{cid}\r\n"
                        + ("Connection: close\r\n" if close else "") + "\r\n").encode()
                conn.sendall(head + (b"" if msg.method == "HEAD" else msg.raw))
                if close:
                    return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass


# === the client ===

WAIT = object()  # read until one more response is complete
RECONNECT = object()  # if the proxy closed the connection, open a new one


@dataclass
class ClientView:
    """What the client received: responses with the number of the
    connection they came on (a RECONNECT step opens the next), and per
    connection an unparseable or incomplete tail."""

    responses: list = field(default_factory=list)  # [(Msg, connection number)]
    errors: dict = field(default_factory=dict)  # connection number -> parse error
    leftovers: dict = field(default_factory=dict)  # connection number -> unparsed bytes
    closed: bool = False  # the proxy closed the last connection
    tunnel: bytes = b""

    @property
    def error(self):
        return next(iter(self.errors.values()), "")

    @property
    def leftover(self):
        return next(iter(self.leftovers.values()), b"")

    def finals(self, conn=None):
        return [m for m, c in self.responses if (m.status >= 200 or m.status == 101) and conn in (None, c)]


def client_run(port, steps, methods, idle=0.4, wait=1.5, budget=5.0):
    """Sends `steps` and parses what comes back. `methods` are the request
    methods in order (HEAD responses have no body). Bounded: each WAIT
    by `wait`, the trailing read by `idle` without a byte, all by `budget`."""
    view = ClientView()
    deadline = time.time() + budget
    state = {"sock": socket.create_connection(("127.0.0.1", port), 2), "buf": b"", "closed": False,
             "tunnel": False, "conn": 0, "broken": False}

    def parse_more():
        while state["buf"] and not state["tunnel"] and not state["broken"]:
            k = len(view.finals())
            head_request = k < len(methods) and methods[k] == "HEAD"
            try:
                st, msg, n = parse_message(state["buf"], request=False, eof=state["closed"],
                                           head_request=head_request)
            except ParseError as e:
                view.errors[state["conn"]] = str(e)
                view.leftovers[state["conn"]], state["buf"] = state["buf"], b""
                state["broken"] = True
                return
            if st == "need":
                return
            view.responses.append((msg, state["conn"]))
            state["buf"] = state["buf"][n:]
            if msg.status == 101:
                state["tunnel"] = True
                view.tunnel += state["buf"]
                state["buf"] = b""

    def read(until_response, quiet=idle):
        have = len(view.finals())
        last = started = time.time()
        while time.time() < deadline and not state["closed"]:
            if until_response and (len(view.finals()) > have or state["broken"] or state["tunnel"]
                                   or time.time() - started > wait):
                return
            if not until_response and time.time() - last > quiet:
                return
            s = state["sock"]
            s.settimeout(0.05)
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                state["closed"] = True
                parse_more()
                return
            last = time.time()
            if state["tunnel"]:
                view.tunnel += data
            else:
                state["buf"] += data
                parse_more()

    def end_conn():
        if state["buf"] and state["conn"] not in view.leftovers:
            view.leftovers[state["conn"]] = state["buf"]

    for step in steps:
        if step is WAIT:
            read(True)
        elif step is RECONNECT:
            read(False, quiet=0.2)  # does the proxy close after that answer?
            if state["closed"] or state["broken"]:
                end_conn()
                state["sock"].close()
                state.update(sock=socket.create_connection(("127.0.0.1", port), 2), buf=b"",
                             closed=False, broken=False, conn=state["conn"] + 1)
        elif not state["closed"]:
            try:
                state["sock"].sendall(step)
            except OSError:
                state["closed"] = True
    read(False)
    view.closed = state["closed"]
    end_conn()
    state["sock"].close()
    return view


def describe_partial(buf):
    """An incomplete response: its head, and how much of the body came."""
    try:
        head = parse_head(buf, request=False)
    except ParseError as e:
        return f"unparseable ({e})"
    if head is None:
        return f'incomplete head "{esc(buf, 20)}"'
    msg, n = head
    framing = msg.get_all("transfer-encoding") or msg.get_all("content-length")
    what = ("TE " if msg.get_all("transfer-encoding") else "CL ") + b", ".join(framing).decode("latin-1") \
        if framing else "until close"
    return f"{msg.status} {what}, cut after {len(buf) - n} body bytes"


# === cases ===


@dataclass
class Case:
    id: str
    input: str  # short description for the table
    steps: list
    rfc: str
    methods: list = field(default_factory=lambda: ["GET"])
    upstream: str = "echo"  # echo | early | close | keep | tunnel
    respond: bytes = None  # raw response to the first request (response cases)
    show: list = field(default_factory=list)  # request fields to show
    note: str = ""
    response_side: bool = False
    group: str = ""  # the table it is shown in


def grouped(items):
    """Cases from a list where a string starts the next group."""
    group, cases = "", []
    for item in items:
        if isinstance(item, str):
            group = item
        else:
            item.group = group
            cases.append(item)
    return cases


def req(head, body=b""):
    return head.encode("latin-1") + body


CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
R2 = b"GET /r2 HTTP/1.1\r\nHost: h\r\n\r\n"


def rcase(id, input, respond, rfc, first=b"GET /r1 HTTP/1.1\r\nHost: h\r\n\r\n", method="GET",
          upstream="keep", note=""):
    """A response case: request /r1 gets `respond`, then /r2 (on a new
    connection if the proxy closed the first) shows whether the proxy is
    still in step with the upstream. With a tunnel, `ping` goes through
    it instead and the upstream echoes it."""
    then = [b"ping"] if upstream == "tunnel" else [RECONNECT, R2]
    return Case(id, input, [first, WAIT, *then], rfc, methods=[method, "GET"],
                upstream=upstream, respond=respond, note=note, response_side=True)


POST_R1 = b"POST /r1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
# The Accept value is the one for this key (RFC 6455 §1.3); HAProxy checks it.
WS_101 = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
UPGRADE_R1 = (b"GET /r1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

CASES = grouped([
    "Requests: Content-Length and Transfer-Encoding",
    Case("cl_te", "CL: 4 + TE: chunked, then a GET",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED + SMUGGLED)],
         "9112 §6.3¶3: TE overrides CL; MAY reject; a forwarder MUST remove CL; §6.1: MUST close after"),
    Case("te_cl", "TE: chunked + CL: 4 (TE first)",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", CHUNKED)],
         "9112 §6.3¶3, as above"),
    Case("cl_cl_diff", "CL: 5 + CL: 6",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", b"hello!")],
         "9112 §6.3¶5: invalid; 400 and close"),
    Case("cl_cl_same", "CL: 5 + CL: 5",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", b"hello")],
         "9110 §8.6, 9112 §6.3¶5: MAY reject or use the one value"),
    Case("cl_list", "CL: 5, 5",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", b"hello")],
         "9112 §6.3¶5: MAY reject or use the one value"),
    Case("cl_plus", "CL: +5",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", b"hello")],
         "9110 §8.6 (1*DIGIT), 9112 §6.3¶5: 400 and close"),
    Case("cl_2_64", "CL: 2^64",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n", b"hello")],
         "9110 §8.6: anticipate overflow; 9112 §6.3¶5: 400"),
    Case("te_chunked_identity", "TE: chunked, identity",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", CHUNKED)],
         "9112 §6.3¶4: chunked not final in a request: 400 and close"),
    Case("te_gzip_chunked", "TE: gzip, chunked",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", CHUNKED)],
         "9112 §6.1: unknown coding SHOULD get 501; a forwarder must not drop a coding"),
    Case("te_gzip", "TE: gzip (not chunked)",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", b"hello")],
         "9112 §6.3¶4: 400 and close"),
    Case("te_twice", "TE: chunked twice",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED)],
         "9112 §6.1: chunked MUST NOT be applied twice (invalid)"),
    Case("te_xchunked", "TE: xchunked",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", CHUNKED)],
         "9112 §6.3¶4: 400 (501 for the unknown coding, §6.1)"),
    Case("te_http10", "HTTP/1.0 + TE: chunked",
         [req("POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED)],
         "9112 §6.1: faulty framing; process or reject, then close"),
    Case("te_space_colon", "CL: 5 + 'Transfer-Encoding : chunked'",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n", b"0\r\n\r\n")],
         "9112 §5.1: space before colon in a request: MUST 400"),
    Case("te_obs_fold", "TE: obs-folded 'chunked' + CL: 5",
         [req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", b"0\r\n\r\n")],
         "9112 §5.2: reject 400 or replace the fold with SP"),
    "Requests: field syntax (obs-fold, bare LF, space before the colon, control bytes)",
    Case("space_colon", "'X-Foo : bar'",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-Foo : bar\r\n\r\n")],
         "9112 §5.1: MUST 400", show=["x-foo"]),
    Case("obs_fold", "obs-fold in X-Foo",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\r\n b\r\n\r\n")],
         "9112 §5.2: 400, or replace with SP before forwarding", show=["x-foo"]),
    Case("bare_lf", "bare LF line ends in the head",
         [b"GET / HTTP/1.1\nHost: h\nX-Foo: a\n\n"],
         "9112 §2.2: a recipient MAY accept LF", show=["x-foo"]),
    Case("bare_cr", "bare CR in a value",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\rb\r\n\r\n")],
         "9112 §2.2: invalid, or replace with SP", show=["x-foo"]),
    Case("nul_value", "NUL in a value",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\x00b\r\n\r\n")],
         "9110 §5.5: reject, or replace with SP", show=["x-foo"]),
    Case("nul_name", "NUL in a name",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-F\x00oo: a\r\n\r\n")],
         "9110 §5.1 (token): invalid, 400"),
    Case("ctl_value", "\\x01 in a value",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\x01b\r\n\r\n")],
         "9110 §5.5: invalid; MAY be kept in a safe context", show=["x-foo"]),
    Case("del_value", "\\x7f in a value",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\x7fb\r\n\r\n")],
         "9110 §5.5: invalid (CTL); MAY be kept", show=["x-foo"]),
    Case("ctl_name", "\\x01 in a name",
         [req("GET / HTTP/1.1\r\nHost: h\r\nX-Foo\x01: a\r\n\r\n")],
         "9110 §5.1 (token): invalid, 400"),
    Case("request_line_spaces", "two spaces in the request line",
         [req("GET  / HTTP/1.1\r\nHost: h\r\n\r\n")],
         "9112 §3: SHOULD 400 (MAY split on whitespace)"),
    "Requests: chunk sizes, extensions and trailers",
    Case("chunk_negative", "chunk size -1",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"-1\r\nhello\r\n0\r\n\r\n")],
         "9112 §7.1 (1*HEXDIG): invalid, 400"),
    Case("chunk_0x", "chunk size 0x5",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n")],
         "9112 §7.1: invalid, 400"),
    Case("chunk_2_64", "chunk size 2^64",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000000000000000\r\nhello\r\n0\r\n\r\n")],
         "9112 §7.1: MUST anticipate overflow; invalid"),
    Case("chunk_plus", "chunk size +5",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"+5\r\nhello\r\n0\r\n\r\n")],
         "9112 §7.1 (1*HEXDIG): invalid, 400"),
    Case("chunk_size_junk", "chunk size '5 x'",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"5 x\r\nhello\r\n0\r\n\r\n")],
         "9112 §7.1: only BWS before ';'; invalid, 400"),
    Case("chunk_zeros", "chunk size 5 with 20 leading zeros",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"000000000000000000005\r\nhello\r\n0\r\n\r\n")],
         "9112 §7.1: valid (1*HEXDIG)"),
    Case("chunk_ext", "chunk extensions",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b'5;a=b;c="d"\r\nhello\r\n0;e\r\n\r\n')],
         "9112 §7.1.1: MUST ignore unknown extensions"),
    Case("chunk_ext_lf", "bare LF ending a chunk extension",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"5;a\nhello\r\n0\r\n\r\n")],
         "9112 §7.1: chunk lines end in CRLF; invalid"),
    Case("chunk_bare_lf", "bare LF chunk lines",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\nhello\n0\n\n")],
         "9112 §7.1: CRLF (the §2.2 LF leniency covers only start line and fields)"),
    Case("chunk_size_ws", "chunk size '5 ' (trailing space)",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"5 \r\nhello\r\n0\r\n\r\n")],
         "9112 §7.1: BWS only before ';'; invalid, commonly accepted"),
    Case("chunk_empty_size", "empty chunk-size line, then a GET",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"\r\n\r\n" + SMUGGLED)],
         "9112 §7.1: 1*HEXDIG; invalid"),
    Case("chunk_no_crlf", "chunk data not followed by CRLF",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n")],
         "9112 §7.1: invalid"),
    Case("trailer_framing", "trailer with CL and TE",
         [req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
              b"5\r\nhello\r\n0\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n")],
         "9110 §6.5.1: framing fields in trailers must not be used; 9112 §7.1.2"),
    "Requests: target and Host",
    Case("abs_form_host", "GET http://a.example/ + Host: b.example",
         [req("GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n")],
         "9112 §3.2.2: Host replaced by the target's authority", show=["host"]),
    Case("dup_host", "Host: a + Host: b",
         [req("GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")],
         "9112 §3.2: MUST 400", show=["host"]),
    Case("no_host", "HTTP/1.1 without Host",
         [req("GET / HTTP/1.1\r\n\r\n")],
         "9112 §3.2: MUST 400", show=["host"]),
    Case("bad_host", "Host: a.example/x",
         [req("GET / HTTP/1.1\r\nHost: a.example/x\r\n\r\n")],
         "9112 §3.2: invalid Host value: MUST 400", show=["host"]),
    "Requests: connections (HTTP/1.0 keep-alive, pipelining, early answers)",
    Case("http10_keepalive", "HTTP/1.0 keep-alive, then a second request",
         [req("GET /1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"), WAIT,
          req("GET /2 HTTP/1.0\r\nHost: h\r\n\r\n")],
         "9112 §9.3: persists after keep-alive only if the recipient is not a proxy (a gateway is an origin "
         "server to the client, 9110 §3.7); closes after a 1.0 request without it", methods=["GET", "GET"]),
    Case("pipeline_cl", "GET pipelined behind a CL body",
         [req("POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")],
         "9112 §9.3.2: answer in order", methods=["POST", "GET"]),
    Case("pipeline_chunked", "GET pipelined behind a chunked body",
         [req("POST /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED + b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")],
         "9112 §9.3.2: answer in order", methods=["POST", "GET"]),
    Case("get_body", "GET with a CL body holding a request",
         [req(f"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: {len(SMUGGLED)}\r\n\r\n", SMUGGLED)],
         "9110 §9.3.1: content has no meaning but is framed by CL"),
    Case("early_response", "upstream answers before the body; rest of body holds a GET",
         [req(f"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: {8 + len(SMUGGLED)}\r\n\r\n", b"12345678"), WAIT,
          SMUGGLED + b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"],
         "9112 §6.3: the rest of the body is still body, never a request; 9110 §10.1.1: a server answering "
         "early says whether it closes or reads on",
         methods=["POST", "GET"], upstream="early"),
    Case("expect_continue", "Expect: 100-continue, body after the 100",
         [req("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"), WAIT, b"hello"],
         "9110 §10.1.1", methods=["POST"]),
    "Responses: both framings, lengths and transfer codings",
    rcase("resp_cl_te", "CL: 99 + TE: chunked (to a GET)",
          b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
          "9112 §6.3¶3: ought to be an error (response splitting); a forwarder MUST remove CL and decode by TE; "
          "the upstream connection is best not reused"),
    rcase("resp_cl_te_post", "CL: 99 + TE: chunked (to a POST)",
          b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
          "9112 §6.3¶3, as above", first=POST_R1, method="POST"),
    rcase("resp_cl_diff", "CL: 5 + CL: 6",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
          "9112 §6.3¶5: proxy MUST close upstream and answer 502"),
    rcase("resp_cl_list", "CL: 5, 5 (to a GET)",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
          "9112 §6.3¶5: MAY use the one value; 9110 §8.6: forward one valid CL"),
    rcase("resp_cl_list_post", "CL: 5, 5 (to a POST)",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
          "as above", first=POST_R1, method="POST"),
    rcase("resp_cl_bad", "CL: -1",
          b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
          "9112 §6.3¶5: 502, close the upstream connection"),
    rcase("resp_te_gzip", "TE: gzip + CL: 5, then close",
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello world",
          "9112 §6.3¶4: chunked not final: length is until close; §6.1: an intermediary may drop a coding "
          "only by decoding it", upstream="close"),
    rcase("resp_te_gzip_chunked", "TE: gzip, chunked",
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
          "9112 §6.1: chunked decoded, but the content is still gzip-coded: forward the coding or decode it"),
    rcase("resp_te_identity", "TE: identity + CL: 5, then close",
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello world",
          "9112 §6.3¶3-4: TE overrides CL; chunked not final: until close (identity codes nothing)",
          upstream="close"),
    rcase("resp_te_http10", "HTTP/1.0 + TE: chunked, then close",
          b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
          "9112 §6.1: faulty framing; close after", upstream="close"),
    "Responses: no body (HEAD, 204) and bytes after the response",
    rcase("resp_head_body", "HEAD answered with a 5-byte body",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
          "9112 §6.3¶1: no body after HEAD; the bytes are not a response",
          first=b"HEAD /r1 HTTP/1.1\r\nHost: h\r\n\r\n", method="HEAD"),
    rcase("resp_204_body", "204 with CL: 5 and a body",
          b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
          "9112 §6.3¶1, 9110 §15.3.5: 204 has no content"),
    rcase("resp_extra", "a second response after the body",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
          "9112 §9.2: unsolicited bytes are not a response to the next request"),
    "Responses: 1xx and 101",
    rcase("resp_101", "101 to an Upgrade (no 1xx before it; the control for the next case)",
          WS_101,
          "9110 §15.2.2, 9110 §7.8: the tunnel starts after the 101",
          first=UPGRADE_R1, upstream="tunnel"),
    rcase("resp_1xx_101", "100 Continue, then 101 to an Upgrade",
          b"HTTP/1.1 100 Continue\r\n\r\n" + WS_101,
          "9110 §15.2: 1xx forwarded or skipped; §15.2.2: then the tunnel",
          first=UPGRADE_R1, upstream="tunnel"),
    rcase("resp_101_unasked", "101 to a request without Upgrade",
          b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
          "9110 §15.2.2: only after an Upgrade request; 502", upstream="tunnel"),
    rcase("resp_103", "103 Early Hints, then 200",
          b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
          "9110 §15.2: a proxy MUST forward 1xx (HTTP/1.1 clients)"),
    "Responses: field syntax and chunk sizes",
    rcase("resp_obs_fold", "obs-fold in a response field",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\r\n b\r\n\r\nhello",
          "9112 §5.2: 502, or replace with SP"),
    rcase("resp_space_colon", "'X-Foo : a' in a response",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo : a\r\n\r\nhello",
          "9112 §5.1: proxy MUST remove the whitespace (or reject)"),
    rcase("resp_nul", "NUL in a response value",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\x00b\r\n\r\nhello",
          "9110 §5.5: reject, or replace with SP"),
    rcase("resp_ctl_value", "\\x01 in a response value",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\x01b\r\n\r\nhello",
          "9110 §5.5: invalid; MAY be kept in a safe context"),
    rcase("resp_ctl_name", "\\x01 in a response field name",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-F\x01oo: a\r\n\r\nhello",
          "9110 §5.1 (token): invalid; 502"),
    rcase("resp_bare_cr", "bare CR in a response value",
          b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\rb\r\n\r\nhello",
          "9112 §2.2: invalid, or replace with SP"),
    rcase("resp_bare_lf", "bare LF line ends in a response head",
          b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
          "9112 §2.2: MAY accept LF"),
    rcase("resp_chunk_2_64", "chunk size 2^64 in a response",
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nhello\r\n0\r\n\r\n",
          "9112 §7.1: invalid; cut the response, close"),
    rcase("resp_chunk_ext", "chunk extensions in a response",
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0;c\r\n\r\n",
          "9112 §7.1.1: MUST ignore"),
    rcase("resp_chunk_zeros", "chunk size 5 with 20 leading zeros in a response",
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000005\r\nhello\r\n0\r\n\r\n",
          "9112 §7.1: valid (1*HEXDIG)"),
    rcase("resp_chunk_junk", "chunk size '5 x' in a response",
          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
          "9112 §7.1: invalid; cut the response, close"),
])


# What Switchyard does, for the report's head: the rules the tables check.
RULES = [
    "- Requests are parsed by hyper (httparse) and checked once more in `check_request`"
    " (`src/proxy/http.rs`); responses to body-less requests by Switchyard's own client"
    " (`src/upstream/h1/codec.rs`), the rest by hyper's client, with the same rules.",
    "- Content-Length and Transfer-Encoding together: the body is read by Transfer-Encoding,"
    " forwarded chunked without the length, and the connection is closed after the exchange"
    " (client side: after the answer; upstream side: never reused).",
    "- Content-Length: digits only; equal repeated fields are one value; different values,"
    " a sign, or an overflow are refused (400 from a client, 502 from a server; a server's"
    " `5, 5` list becomes one `Content-Length: 5`).",
    "- Transfer-Encoding: requests may carry only `chunked`, once and last (other codings 501,"
    " the rest 400; HTTP/1.0 with Transfer-Encoding 400). Responses may carry `chunked`"
    " (last, once) and `identity`; any other coding gets 502, since the field is not forwarded"
    " and the content would reach the client still coded but labelled plain. Transfer-Encoding"
    " in an HTTP/1.0 response is faulty framing: read until the server closes.",
    "- Field syntax: obs-fold, whitespace before the colon, bare CR, NUL and other control bytes"
    " (except HTAB) in names or values, and more than one space in the request line are refused"
    " (400; 502 in a response). A bare LF as line end is accepted and the message forwarded"
    " with CRLF.",
    "- Chunk sizes: hex digits only (leading zeros allowed, at most 16 significant), optional"
    " whitespace then `;extensions` (ignored; a control byte refused), CRLF after every line"
    " and every chunk's data. A bad request body is answered 400 and not counted against the"
    " server; a bad response body is cut and the connection closed.",
    "- Host: one field with a `host[:port]` value, else 400; an absolute-form target's"
    " authority routes the request and replaces the Host field upstream; HTTP/1.1 without Host"
    " gets a Host naming the server.",
    "- Interim responses: 100 before a 101 is skipped and the tunnel opens; other 1xx are"
    " skipped (hyper cannot send them on); a 101 to a request that asked no upgrade is a 502.",
]

# Why Switchyard does what it does where it differs from a peer.
WHY = {
    "cl_te": "hyper reads the body by Transfer-Encoding alone, Switchyard forwards it chunked without"
             " Content-Length and closes the client connection after the answer (RFC 9112 §6.1), so the"
             " request hidden after the chunked body is never read; refusing outright, as nginx does, is"
             " the other choice the RFC allows.",
    "te_cl": "As `cl_te`.",
    "cl_cl_same": "Two equal fields are one value (RFC 9110 §8.6); the server gets one field.",
    "cl_list": "hyper refuses a list in one request field while it takes repeated equal fields as one"
               " (`cl_cl_same`); RFC 9110 §8.6 allows either. HAProxy forwards the single value.",
    "te_http10": "hyper refuses Transfer-Encoding in an HTTP/1.0 request; HAProxy forwards an HTTP/1.0"
                 " request with chunked framing, which an HTTP/1.0 server would not decode.",
    "te_obs_fold": "obs-fold is refused (400), one of the two choices of RFC 9112 §5.2; HAProxy unfolds"
                   " it and forwards the message by Transfer-Encoding.",
    "obs_fold": "As `te_obs_fold`; HAProxy replaces the fold with spaces.",
    "nul_value": "RFC 9110 §5.5: a recipient MUST refuse a NUL or replace it with SP; HAProxy forwards it.",
    "ctl_value": "httparse refuses every control byte but HTAB in a value; RFC 9110 §5.5 lets a recipient"
                 " keep them in a safe context, as HAProxy and nginx do.",
    "del_value": "As `ctl_value`.",
    "request_line_spaces": "httparse requires single spaces; RFC 9112 §3 says SHOULD answer 400 and MAY"
                           " split on whitespace, which HAProxy and nginx do.",
    "chunk_ext_lf": "hyper requires CRLF after every chunk line; the LF leniency of RFC 9112 §2.2 covers"
                    " only the start line and fields. HAProxy and nginx take the bare LF.",
    "chunk_bare_lf": "As `chunk_ext_lf`.",
    "chunk_size_ws": "HAProxy and nginx accept it too; the body is re-chunked upstream, so the server"
                     " never sees the line.",
    "chunk_size_junk": "hyper allows only whitespace before `;`, as does HAProxy; nginx reads `5 x` as 5"
                       " (it re-frames the body with Content-Length, so its server sees no odd line).",
    "abs_form_host": "Routed by the target's authority, which replaces the Host field upstream (RFC 9112"
                     " §3.2.2), so Switchyard and the server agree on the host; HAProxy refuses a Host that"
                     " differs from the authority.",
    "no_host": "HAProxy forwards the request without Host; nginx answers 400.",
    "bad_host": "A Host that is not `host[:port]` is refused (RFC 9112 §3.2); HAProxy forwards it.",
    "expect_continue": "hyper answers 100 itself when the body is first read; HAProxy passes Expect on to"
                       " the server, which here sends no 100.",
    "resp_cl_te": "Switchyard decodes by Transfer-Encoding, sends no Content-Length and never reuses"
                  " that upstream connection; nginx reuses it.",
    "resp_cl_te_post": "As `resp_cl_te`, through hyper's client.",
    "resp_cl_diff": "RFC 9112 §6.3 requires 502 from a proxy; nginx forwards the response with the"
                    " last length and uses the connection again.",
    "resp_cl_list": "`5, 5` is one value (RFC 9110 §8.6), sent on as `Content-Length: 5`; nginx takes the"
                    " list for no length and reads until the server closes.",
    "resp_cl_list_post": "As `resp_cl_list`, through hyper's client.",
    "resp_cl_bad": "nginx ignores the invalid length and reads until the server closes.",
    "resp_te_gzip": "Transfer-Encoding is hop-by-hop and Switchyard does not decode gzip, so it refuses"
                    " the response rather than hand the client gzip bytes labelled plain (it did that"
                    " before this table was made). nginx frames the body by the Content-Length beside"
                    " Transfer-Encoding (RFC 9112 §6.3 says TE overrides CL) and loses the rest.",
    "resp_te_gzip_chunked": "As `resp_te_gzip`: after the chunks are decoded the content is still gzip."
                            " HAProxy answers 502 too; nginx decodes the chunks and drops the gzip coding,"
                            " which is what Switchyard did before this table was made.",
    "resp_te_identity": "identity codes nothing: read until the server closes and sent on chunked."
                        " HAProxy refuses any coding but chunked; nginx frames by the Content-Length"
                        " beside it and loses the rest.",
    "resp_te_http10": "Switchyard's own client reads until the server closes and sends the bytes on"
                      " unchanged (the chunk lines are part of the content); hyper's client (requests"
                      " with a body) answers 502. HAProxy and nginx decode the chunks. RFC 9112 §6.1 asks"
                      " only that the framing be treated as faulty and the connection closed.",
    "resp_1xx_101": "Switchyard skips the 100 and opens the tunnel at the 101. HAProxy answers 502 when"
                    " a 100 precedes the 101; nginx takes the 100 for the final response and copies the"
                    " 101 after it as body bytes, so no tunnel opens.",
    "resp_101_unasked": "Both of Switchyard's clients refuse it (hyper's let it through before this"
                        " table was made); HAProxy too. nginx passes the 101 to a client that asked for"
                        " no upgrade (RFC 9110 §7.8: a server MUST NOT switch to a protocol not asked for).",
    "resp_103": "hyper's server cannot send an interim response other than 100, so Switchyard drops the"
                " 103 and forwards the final response (RFC 8297 §3 also advises against 103 to"
                " HTTP/1.1 clients not known to handle it). HAProxy forwards it; nginx forwards the 103"
                " as if final, with the real response as its body.",
    "resp_obs_fold": "502, one of RFC 9112 §5.2's two choices; HAProxy unfolds it.",
    "resp_nul": "RFC 9110 §5.5: refuse or replace; HAProxy forwards the NUL.",
    "resp_ctl_value": "httparse refuses every control byte but HTAB in a value, so the response is a 502;"
                      " RFC 9110 §5.5 lets a recipient keep it in a safe context, as HAProxy and nginx do.",
    "resp_chunk_2_64": "Switchyard reads the first chunk line before hyper writes the head, so the"
                       " client connection closes with no answer (a longer body would be cut after the"
                       " head); HAProxy answers 502. Both close the upstream connection.",
    "resp_chunk_junk": "Switchyard's own client read `5 x` as 5 before this table was made; nginx still"
                       " does, and uses the connection again. HAProxy answers 502.",
    "resp_chunk_zeros": "Switchyard's own client refused more than 16 digits before this table was made.",
}

# Where Switchyard departs from what RFC 9110/9112 require.
DEPARTS = {
    "no_host": "RFC 9112 §3.2 says a server MUST answer 400 to HTTP/1.1 without Host; Switchyard"
               " forwards it with a Host naming the server.",
    "resp_103": "RFC 9110 §15.2 says a proxy MUST forward 1xx responses; Switchyard drops them (all but"
                " a 100 it sends itself and a 101 that opens a tunnel).",
    "chunk_size_ws": "the chunk grammar (RFC 9112 §7.1) has no whitespace after the size unless `;`"
                     " follows; Switchyard accepts it.",
}


# === the proxies ===


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


class Proxy:
    """One proxy process, stopped by its PID."""

    def __init__(self, name, label, args, port, workdir):
        self.name, self.label, self.port = name, label, port
        self.logfile = open(workdir / f"{name}.log", "w")
        self.p = subprocess.Popen(args, stdout=self.logfile, stderr=subprocess.STDOUT)
        wait_port(port, self.p)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logfile.close()


def start_switchyard(workdir, upstream):
    port, admin = free_port(), free_port()
    conf = workdir / "switchyard.toml"
    conf.write_text(f"""
[admin]
bind = "127.0.0.1:{admin}"

[timeouts]
request = "5s"
client_stall = "5s"

[[listeners]]
name = "web"
bind = "127.0.0.1:{port}"
default_backend = "up"

[[backends]]
name = "up"
servers = ["127.0.0.1:{upstream}"]
""")
    binary = switchyard_bin()
    return Proxy("switchyard", "Switchyard",
                 [str(binary), "--log-level", "warn", "run", "-c", str(conf), "--no-watch"], port, workdir)


def start_haproxy(workdir, upstream):
    port = free_port()
    conf = workdir / "haproxy.cfg"
    conf.write_text(f"""
global
    maxconn 1000

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout http-request 10s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server up 127.0.0.1:{upstream}
""")
    return Proxy("haproxy", "HAProxy 2.6", ["haproxy", "-f", str(conf), "-db"], port, workdir)


def start_nginx(workdir, upstream):
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log info;
events {{ worker_connections 1000; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    upstream up {{
        server 127.0.0.1:{upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
""")
    return Proxy("nginx", "nginx 1.22", ["nginx", "-c", str(conf), "-e", str(workdir / "nginx-error.log")],
                 port, workdir)


# === running and summarising ===


@dataclass
class Outcome:
    view: ClientView
    seen: list
    verdict: str = ""  # reject | forward | close | mixed
    unsafe: list = field(default_factory=list)
    cell: str = ""


FRAMING_ANOMALIES = ("CL+TE", "CL x", "CL list", "TE ", "chunked twice", "TE in HTTP/1.0", "bare LF",
                     "bare CR", "obs-fold", "space before colon", "NUL in value", "bad name")


def framing_anomalies(msg):
    return list(dict.fromkeys(a for a in msg.anomalies if a.startswith(FRAMING_ANOMALIES)))


def run_case(case, proxy, upstream):
    upstream.reset(case)
    time.sleep(0.05)  # let the proxy see its pooled upstream connections close
    view = client_run(proxy.port, case.steps, case.methods, wait=2.5 if case.response_side else 1.5)
    time.sleep(0.1)  # the upstream may still be logging the last request
    with upstream.lock:
        seen = list(upstream.seen)
    return summarise(case, Outcome(view, seen))


def describe_request(case, s):
    if s.error:
        return f"upstream parse error ({s.error})"
    m = s.msg
    parts = [f"{m.method} {m.target}"]
    if m.version != "HTTP/1.1":
        parts.append(m.version)
    cl, te = m.get_all("content-length"), m.get_all("transfer-encoding")
    if te:
        parts.append("TE " + b", ".join(te).decode("latin-1"))
    if cl:
        parts.append("CL " + b", ".join(cl).decode("latin-1"))
    if m.body:
        parts.append(f'"{esc(m.body, 14)}"')
    for name in case.show:
        values = m.get_all(name)
        parts.append(f"{name}: " + (" | ".join(esc(v, 20) for v in values) if values else "(none)"))
    bad = framing_anomalies(m)
    if bad:
        parts.append("⚠ " + ", ".join(bad))
    return " ".join(parts)


def describe_response(r):
    m = r
    parts = [str(m.status)]
    if m.status >= 200 and m.status != 101:
        cl, te = m.get_all("content-length"), m.get_all("transfer-encoding")
        if te:
            parts.append("TE " + b", ".join(te).decode("latin-1"))
        elif cl:
            parts.append("CL " + b", ".join(cl).decode("latin-1"))
        elif m.framing == "close":
            parts.append("until close")
        if m.body:
            parts.append(f'"{esc(m.body, 16)}"')
    bad = framing_anomalies(m)
    if bad:
        parts.append("⚠ " + ", ".join(bad))
    return " ".join(parts)


def summarise(case, out):
    v, seen = out.view, out.seen
    statuses = [m.status for m, _ in v.responses]
    # Unsafe: a forwarded message a strict server would frame differently,
    # or the smuggled request reaching the server as a request.
    for s in seen:
        if s.error:
            out.unsafe.append("forwarded what a strict server cannot parse")
        if s.msg is not None:
            bad = framing_anomalies(s.msg)
            if bad:
                out.unsafe.append(f"forwarded {', '.join(bad)}")
            if s.msg.target == "/smuggled":
                out.unsafe.append("/smuggled reached the server as a request")
    for m, _ in v.responses:
        bad = framing_anomalies(m)
        if bad:
            out.unsafe.append(f"client got {', '.join(bad)}")
    if v.error:
        out.unsafe.append(f"client could not parse: {v.error}")
    if case.response_side:
        out.cell, out.verdict = summarise_response(case, out)
        return out
    client = ", ".join(map(str, statuses)) or "no response"
    if v.error:
        client += f", then unparseable ({esc(v.leftover, 20)})"
    elif v.leftover:
        client += f", then {describe_partial(v.leftover)}"
    if v.closed:
        client += ", closed"
    if not seen:
        out.verdict = "close" if not statuses else "reject" if all(s >= 400 for s in statuses) else "mixed"
        out.cell = client
    else:
        out.verdict = "forward" if all(s < 400 for s in statuses) else "mixed"
        fwd = "; ".join(describe_request(case, s) for s in seen)
        out.cell = f"fwd {fwd} → {client}"
    if out.unsafe:
        out.cell = "⚠ " + out.cell
    return out


def summarise_response(case, out):
    v, seen = out.view, out.seen
    # The answer to /r1 (with any 1xx before it) came on connection 0.
    shown = []
    for m, c in v.responses:
        if c != 0:
            break
        shown.append(describe_response(m))
        if m.status >= 200 or m.status == 101:
            break
    r1 = v.finals(0)[:1]
    if not r1 and 0 in v.errors:
        shown.append(f"unparseable ({v.errors[0]})")
    elif not r1 and 0 in v.leftovers:
        shown.append(describe_partial(v.leftovers[0]))
    elif not r1:
        shown.append("no answer" + (", closed" if v.closed or len(v.finals()) else ""))
    if r1 and r1[0].status == 101:
        shown.append("tunnel echoes" if b"ping" in v.tunnel else "tunnel silent")
    # What /r2 got: the next answer on connection 0, or the first on 1.
    r1_conn = next((s.conn for s in seen if s.msg is not None and s.msg.target == "/r1"), None)
    r2_seen = next((s for s in seen if s.msg is not None and s.msg.target == "/r2"), None)
    r2 = ""
    if case.upstream != "tunnel":
        last = max([c for _, c in v.responses] + list(v.leftovers) + list(v.errors) + [0])
        after = v.finals(0)[1:] + (v.finals(last) if last > 0 else [])
        if after:
            if b"GET /r2" in after[0].body:
                r2 = "r2 ok" + (" (same upstream conn)" if r2_seen and r2_seen.conn == r1_conn else "")
            else:
                r2 = f"r2 got {describe_response(after[0])}"
                out.unsafe.append("the second request got another answer")
        elif last in v.errors and (last > 0 or r1):
            r2 = f"r2 unparseable ({esc(v.leftovers.get(last, b''), 24)})"
        elif last in v.leftovers and (last > 0 or r1):
            r2 = f"r2 {describe_partial(v.leftovers[last])}"
        else:
            r2 = "r2: no answer"
    cell = "; ".join(shown)
    if r2:
        cell += f"; {r2}"
    status = r1[0].status if r1 else 0
    verdict = "reject" if status >= 500 else "forward" if status else "close"
    if out.unsafe:
        cell = "⚠ " + cell
    return cell, verdict


PEERS = (("haproxy", "HAProxy"), ("nginx", "nginx"))
LABELS = {"switchyard": "Switchyard", "haproxy": "HAProxy", "nginx": "nginx"}
REFUSED = ("reject", "close")


def relation(sy, peer):
    """'stricter' when Switchyard refused (an error status, or a close or
    cut) what the peer passed on, 'looser' the other way round, else None."""
    if sy.verdict in REFUSED and peer.verdict == "forward":
        return "stricter"
    if sy.verdict == "forward" and peer.verdict in REFUSED:
        return "looser"
    return None


def compare_note(case, results):
    """Where Switchyard is stricter or looser than a peer, and any unsafe
    outcome, for the table's last column."""
    notes = []
    for name, label in PEERS:
        rel = relation(results["switchyard"], results[name])
        if rel:
            notes.append(f"{rel} than {label}")
    if results["switchyard"].unsafe:
        notes.append("UNSAFE: " + "; ".join(results["switchyard"].unsafe))
    if case.note:
        notes.append(case.note)
    return "; ".join(notes)


def md(s):
    return s.replace("|", "\\|").replace("\n", " ")


def summary(results, cases, names):
    """Counts per proxy and side: (rows of a Markdown table, one-line
    text per proxy for the console)."""
    sides = (("request", [c for c in cases if not c.response_side]),
             ("response", [c for c in cases if c.response_side]))
    rows, lines = [], []
    stats = {}
    for name in names:
        st = stats[name] = {}
        for side, side_cases in sides:
            outs = [results[c.id][name] for c in side_cases]
            st[side] = {v: sum(o.verdict == v for o in outs) for v in ("reject", "close", "forward", "mixed")}
            st[side]["unsafe"] = sum(bool(o.unsafe) for o in outs)
            st[side]["n"] = len(outs)
    header = "| | " + " | ".join(LABELS[n] for n in names) + " |"
    rows += [header, "|---" * (len(names) + 1) + "|"]

    def row(label, get):
        rows.append(f"| {label} | " + " | ".join(str(get(stats[n])) for n in names) + " |")

    for side, side_cases in sides:
        if not side_cases:
            continue
        n = len(side_cases)
        if side == "request":
            row(f"request cases ({n}): refused with 4xx/5xx", lambda st: st["request"]["reject"])
            row("request cases: closed without an answer", lambda st: st["request"]["close"])
            row("request cases: forwarded", lambda st: st["request"]["forward"] + st["request"]["mixed"])
        else:
            row(f"response cases ({n}): refused with 502", lambda st: st["response"]["reject"])
            row("response cases: cut, or no answer", lambda st: st["response"]["close"])
            row("response cases: passed to the client", lambda st: st["response"]["forward"])
    row("⚠ unsafe outcomes (all cases)", lambda st: st["request"]["unsafe"] + st["response"]["unsafe"])
    for name in names:
        st = stats[name]
        lines.append(f"{LABELS[name]}: requests {st['request']['n']}: refused {st['request']['reject']}, "
                     f"closed {st['request']['close']}, forwarded {st['request']['forward'] + st['request']['mixed']}; "
                     f"responses {st['response']['n']}: 502 {st['response']['reject']}, "
                     f"cut/no answer {st['response']['close']}, passed on {st['response']['forward']}; "
                     f"unsafe {st['request']['unsafe'] + st['response']['unsafe']}")
    if "switchyard" in names:
        for name, label in PEERS:
            if name not in names:
                continue
            rels = [relation(results[c.id]["switchyard"], results[c.id][name]) for c in cases]
            text = (f"Switchyard is stricter than {label} in {rels.count('stricter')} cases "
                    f"and looser in {rels.count('looser')}")
            lines.append(text)
    return rows, lines


def differences(results, cases, names):
    """Each case where Switchyard is stricter or looser than a peer, or
    departs from the RFC, said in words."""
    out = []
    for case in cases:
        r = results[case.id]
        rels = [(label, relation(r["switchyard"], r[name])) for name, label in PEERS if name in names]
        rels = [(label, rel) for label, rel in rels if rel]
        why = WHY.get(case.id, "")
        departs = DEPARTS.get(case.id, "")
        if not rels and not departs and not why:
            continue
        did = "; ".join(f"{LABELS[n]}: {r[n].cell}" for n in names)
        verdict = ", ".join(f"{rel} than {label}" for label, rel in rels)
        text = f"- `{case.id}` ({case.input}): " + (f"Switchyard is {verdict}. " if verdict else "")
        if departs:
            text += f"Departs from the RFC: {departs} "
        if why:
            text += why + " "
        text += f"(Observed: {did}.)"
        out.append(md(text.strip()))
    return out


def report(results, proxies, binary, command, names):
    lines = [
        "# HTTP/1.1 framing conformance",
        "",
        "The same raw bytes sent to Switchyard, HAProxy and nginx, each proxying to one",
        "raw TCP upstream that records exactly what it receives and echoes each request's",
        "bytes back. Generated by `bench/framing_conformance.py`; `tests/framing.rs`",
        "asserts Switchyard's column in `cargo test` (issue 21).",
        "",
        f"Command: `{command}`",
        "",
        *versions(binary),
        "",
        "How to read a cell: a status alone is the proxy's own answer (nothing reached",
        "the upstream); `fwd …` is what the upstream received (method, target, framing",
        "fields as forwarded, body, selected fields) and `→` what the client got;",
        "`closed` means the proxy closed the client connection. Response cases show",
        "what the client received for `/r1`, then what a second request `/r2` got (sent",
        "on a new connection if the proxy had closed the first); `same upstream conn`",
        "means the proxy sent `/r2` on the upstream connection that carried the case's",
        "response. In response cases the upstream closes a connection idle for 1 s, so",
        "a proxy that reads a response until close shows what it then sent. ⚠ marks a",
        "message a strict RFC 9112 parser frames differently (both framings, a duplicate",
        "or listed length, a non-chunked coding, bare LF, obs-fold, NUL, …) reaching the",
        "other side, a smuggled request reaching the server, or a second request getting",
        "another request's answer. \"Stricter\" means Switchyard refused (an error status,",
        "or a closed or cut connection) what the peer passed on; \"looser\" the reverse.",
        "nginx runs with `proxy_http_version 1.1`, upstream keep-alive and",
        "`proxy_set_header Host $host`, HAProxy and nginx with their defaults otherwise",
        "(nginx buffers request bodies and sends them with Content-Length).",
        "",
    ]
    ran = [c for c in CASES if c.id in results]
    rows, _ = summary(results, ran, names)
    lines += ["## Summary", "", *rows, ""]
    if "switchyard" in names:
        for name, label in PEERS:
            if name in names:
                rels = [relation(results[c.id]["switchyard"], results[c.id][name]) for c in ran]
                lines.append(f"- Switchyard is stricter than {label} in {rels.count('stricter')} cases "
                             f"and looser in {rels.count('looser')}.")
        lines.append("")
    lines += ["## Switchyard's rules", "", *RULES, ""]
    groups = list(dict.fromkeys(c.group for c in ran))
    for group in groups:
        lines.extend([f"## {group}", "",
                      "| case | input | Switchyard | HAProxy 2.6 | nginx 1.22 | RFC 9110/9112 | note |",
                      "|---|---|---|---|---|---|---|"])
        for case in ran:
            if case.group != group:
                continue
            r = results[case.id]
            lines.append("| " + " | ".join(md(x) for x in [
                f"`{case.id}`", case.input, r["switchyard"].cell, r["haproxy"].cell, r["nginx"].cell,
                case.rfc, compare_note(case, r)]) + " |")
        lines.append("")
    diffs = differences(results, ran, names) if "switchyard" in names else []
    if diffs:
        lines += ["## Where Switchyard is stricter or looser, in words", "",
                  "Every case where Switchyard is stricter or looser than a peer, departs from the RFC,",
                  "or differs in a way the verdicts do not show (connection reuse, what reaches the",
                  "client).", "", *diffs, ""]
    return "\n".join(lines)


def versions(binary):
    def first_line(args):
        try:
            out = subprocess.run(args, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"

    return [
        f"- {first_line([str(binary), '--version'])} ({binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary})",
        f"- {first_line(['haproxy', '-v'])}",
        f"- {first_line(['nginx', '-v'])}",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="comma-separated case ids (default: all)")
    ap.add_argument("--proxies", default="switchyard,haproxy,nginx")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "framing-conformance.md")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--print", action="store_true", help="print the cells instead of writing the report")
    args = ap.parse_args()
    cases = CASES
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.id for c in CASES}
        if unknown:
            raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.id in wanted]
    names = args.proxies.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-framing-"))
    log(f"work dir {workdir}")
    upstream = Upstream()
    starters = {"switchyard": start_switchyard, "haproxy": start_haproxy, "nginx": start_nginx}
    results = {c.id: {} for c in cases}
    proxies = []
    try:
        for name in names:
            proxy = starters[name](workdir, upstream.port)
            proxies.append(proxy)
            log(f"{proxy.label} on {proxy.port}")
            for case in cases:
                results[case.id][name] = run_case(case, proxy, upstream)
                if proxy.p.poll() is not None:
                    raise SystemExit(f"{proxy.label} exited during {case.id}; see {workdir}/{name}.log")
            proxy.stop()
    finally:
        for proxy in proxies:
            proxy.stop()
    for name in ("switchyard", "haproxy", "nginx"):
        if name not in names:
            for case in cases:
                results[case.id][name] = Outcome(ClientView(), [], cell="(not run)")
    if args.json:
        args.json.write_text(json.dumps({cid: {n: {"cell": o.cell, "verdict": o.verdict, "unsafe": o.unsafe}
                                                for n, o in r.items()} for cid, r in results.items()}, indent=1))
    if args.print:
        for case in cases:
            print(f"== {case.id}: {case.input}")
            for name in names:
                o = results[case.id][name]
                print(f"   {name:10} [{o.verdict}] {o.cell}")
        return
    command = "python3 bench/framing_conformance.py" + ("" if not sys.argv[1:] else " " + " ".join(sys.argv[1:]))
    text = report(results, proxies, switchyard_bin(), command, names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    log(f"wrote {args.out}")
    for line in summary(results, cases, names)[1]:
        log(line)
    unsafe = [c.id for c in cases if results[c.id].get("switchyard") and results[c.id]["switchyard"].unsafe]
    if unsafe and "switchyard" in names:
        log(f"Switchyard unsafe in: {', '.join(unsafe)}")


if __name__ == "__main__":
    main()
