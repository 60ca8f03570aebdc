#!/usr/bin/env python3
"""A loopback stand-in for the Hugging Face hub, for the `voxq store pull` tests.

Serves ROOT/<owner>/<name>/<file> the way the hub does:

  HEAD|GET /<owner>/<name>/resolve/<revision>/<file>
      revision: "main" or the repo's commit (--commit); else 404 X-Error-Code RevisionNotFound.
      unknown repo: 404 RepoNotFound; unknown file: 404 EntryNotFound.
      *.safetensors (LFS files): 302 to the CDN path with X-Linked-Size, X-Linked-Etag and ETag
      (the file's sha256), X-Repo-Commit. Other files: 200 with ETag (a sha1, as git blobs have),
      Content-Length and X-Repo-Commit.
  GET /cdn/<owner>/<name>/<commit>/<file>
      the bytes, with Range support (206 + Content-Range, 416 past the end).

Faults (for the tests): --drop FILE:N drops the connection halfway through the first N CDN
GETs of FILE; --corrupt FILE serves FILE with one byte flipped (the ETag keeps the true sha256);
--no-range ignores Range headers; --token T makes resolve URLs need "Authorization: Bearer T"
(401 GatedRepo otherwise); --cdn-host H names the CDN host in redirects (a host other than the
resolve host shows whether a client leaks the token to the CDN).

Every request is appended to --log as a JSON line {method, path, range, auth}. The chosen port
is written to --port-file once the server listens. Stdlib only; stops on SIGTERM.
"""
import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--commit", default="0123456789abcdef0123456789abcdef01234567")
    ap.add_argument("--drop", action="append", default=[])
    ap.add_argument("--corrupt", action="append", default=[])
    ap.add_argument("--no-range", action="store_true")
    ap.add_argument("--token", default="")
    ap.add_argument("--cdn-host", default="127.0.0.1")
    return ap.parse_args()


ARGS = parse_args()
LOCK = threading.Lock()
DROPS = {}
for spec in ARGS.drop:
    name, _, count = spec.partition(":")
    DROPS[name] = int(count or "1")


def log_request(method, path, rng, auth):
    with LOCK, open(ARGS.log, "a", encoding="utf-8") as fp:
        fp.write(json.dumps({"method": method, "path": path, "range": rng, "auth": auth}) + "\n")


def file_bytes(repo, name):
    with open(os.path.join(ARGS.root, repo, name), "rb") as fp:
        data = fp.read()
    if name in ARGS.corrupt and data:
        mid = len(data) // 2
        data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
    return data


def true_bytes(repo, name):
    with open(os.path.join(ARGS.root, repo, name), "rb") as fp:
        return fp.read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the JSON log is the record
        pass

    def send_plain(self, status, headers, body=b""):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def not_found(self, code, message):
        body = json.dumps({"error": message}).encode()
        self.send_plain(404, {"X-Error-Code": code, "X-Error-Message": message,
                              "Content-Type": "application/json"}, body)

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        auth = self.headers.get("Authorization")
        rng = self.headers.get("Range")
        log_request(self.command, self.path, rng, auth is not None)
        parts = self.path.split("?")[0].lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            self.resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), auth)
        elif len(parts) >= 5 and parts[0] == "cdn":
            self.cdn(parts[1] + "/" + parts[2], "/".join(parts[4:]), rng)
        else:
            self.send_plain(400, {}, b"bad path\n")

    def resolve(self, repo, revision, name, auth):
        if ARGS.token and auth != "Bearer " + ARGS.token:
            msg = "Access to this repository is restricted: you must be authenticated."
            self.send_plain(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": msg}, b"")
            return
        if not os.path.isdir(os.path.join(ARGS.root, repo)):
            self.not_found("RepoNotFound", "Repository not found")
            return
        if revision not in ("main", ARGS.commit):
            self.not_found("RevisionNotFound", "Invalid rev id: " + revision)
            return
        path = os.path.join(ARGS.root, repo, name)
        if not os.path.isfile(path):
            self.not_found("EntryNotFound", name + " does not exist on \"" + revision + "\"")
            return
        data = true_bytes(repo, name)
        common = {"X-Repo-Commit": ARGS.commit}
        if name.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            port = self.server.server_address[1]
            location = "http://%s:%d/cdn/%s/%s/%s" % (ARGS.cdn_host, port, repo, ARGS.commit,
                                                       name)
            common.update({"Location": location, "X-Linked-Size": str(len(data)),
                           "X-Linked-Etag": '"%s"' % sha, "ETag": '"%s"' % sha})
            self.send_plain(302, common, b"")
            return
        common["ETag"] = '"%s"' % hashlib.sha1(data).hexdigest()
        self.send_response(200)
        for k, v in common.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(file_bytes(repo, name))

    def cdn(self, repo, name, rng):
        path = os.path.join(ARGS.root, repo, name)
        if not os.path.isfile(path):
            self.send_plain(404, {}, b"no such object\n")
            return
        data = file_bytes(repo, name)
        start = 0
        if rng and not ARGS.no_range:
            if not rng.startswith("bytes=") or not rng[6:].split("-")[0].isdigit():
                self.send_plain(400, {}, b"bad range\n")
                return
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_plain(416, {"Content-Range": "bytes */%d" % len(data)}, b"")
                return
        body = data[start:]
        status = 206 if start > 0 or (rng and not ARGS.no_range) else 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"%s"' % hashlib.sha256(true_bytes(repo, name)).hexdigest())
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range",
                             "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.end_headers()
        with LOCK:
            drop = DROPS.get(name, 0) > 0
            if drop:
                DROPS[name] -= 1
        if drop:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = ARGS.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fp:
        fp.write(str(server.server_address[1]))
    os.rename(tmp, ARGS.port_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
