"""A stand-in for vLLM's OpenAI server (tests of tulu-eval's vllm and server backends without vLLM): started
with vLLM's arguments, it serves /v1/models and answers every /v1/completions prompt with the same text,
recording each request's body in the file TULU_FAKE_SERVER_LOG names."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "The answer is 12."


class Handler(BaseHTTPRequestHandler):
    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"data": [{"id": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(os.environ["TULU_FAKE_SERVER_LOG"], "a") as f:
            f.write(json.dumps(body) + "\n")
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        self._send({"choices": [{"index": i, "text": ANSWER, "finish_reason": "stop"} for i in range(len(prompts))]})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    argv = sys.argv[1:]
    port = int(argv[argv.index("--port") + 1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
