#!/usr/bin/env python3
"""A loopback token endpoint for the benchmark: answers every POST with fresh fake tokens.
Usage: token_endpoint.py PORT_FILE  (binds 127.0.0.1:0 and writes the port to PORT_FILE)."""
import http.server, json, secrets, sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps({
            "access_token": "sk-ant-oat01-bench" + secrets.token_hex(24),
            "refresh_token": "sk-ant-ort01-bench" + secrets.token_hex(24),
            "expires_in": 28800,
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
