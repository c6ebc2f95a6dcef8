#!/usr/bin/env python3
"""A local webhook for the order workers of config/local.toml: prints each delivery.

    python3 tools/webhook.py            # listens on 127.0.0.1:8089
"""

import http.server
import sys


class Deliveries(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(f"{self.path} {body.decode(errors='replace')}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8089
    print(f"webhook on http://127.0.0.1:{port}/ (Ctrl-C stops it)", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Deliveries).serve_forever()
