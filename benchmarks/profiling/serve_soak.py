"""A soak test of ``restkv serve``: many mixed requests at a fixed concurrency, some clients leaving
mid-stream and some requests malformed, then whether the server leaked blocks or memory.

It starts ``restkv serve`` on loopback (a free port, the embedded SmolLM2 unless ``--model``) as a
child process and keeps ``--concurrency`` client threads busy until both ``--requests`` requests
have been sent and ``--min-seconds`` have passed (it stops sending at ``--max-seconds`` whatever
the count). Each request draws, from a seeded generator:

* a prompt length (about 40, 150, 400 or 900 words, the longer ones rarer) and ``max_tokens`` 4-24;
* a method through the ``restkv`` request field (none: the server's own press; ``full``, snapkv,
  tova, streamingllm, restkv at a smaller budget);
* a kind: chat, chat streamed to the end, text completion, chat streamed and dropped by its
  client after 1-4 generated tokens (``--disconnect-share``, 10%), or a malformed body
  (``--malformed-share``, 2%: no messages, ``messages: "hi"``, ``max_tokens: 0``, an unknown
  method, a body that is not JSON).

Recorded per request (``rows.jsonl``, written as each ends): kind, method, words, status, latency
(to the last byte; for a stream also to its first event), the usage the server reported, and any
error. Resident memory of the server (``VmRSS``) is sampled every 10 s. After the last request: the
pool's free blocks against its total (``/v1/restkv/stats``, nothing in flight: every block should
be free), ``/health``, and how long SIGTERM takes to stop the server. ``summary.json`` holds the
counts, error rate (Wilson 95% interval), latency percentiles and means (bootstrap 95% interval),
RSS after start, after the warm-up and at the end, the command, wall time and load.

    .venv/bin/python benchmarks/profiling/serve_soak.py --out benchmarks/results/serve-soak
        [--requests 1000] [--min-seconds 600] [--max-seconds 2400] [--concurrency 8] [--num-blocks 512]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from restkv.eval.intervals import bootstrap_mean, wilson

WORDS = "the river keeps a ledger of every stone it has moved and reads it back to the sea at night".split()
LENGTHS = ((40, 0.4), (150, 0.3), (400, 0.2), (900, 0.1))  # words, share
METHODS = (None, {"method": "full"}, {"method": "snapkv", "budget": 64}, {"method": "tova", "budget": 64},
           {"method": "streamingllm", "budget": 64}, {"method": "restkv", "budget": 96})  # fmt: skip
MALFORMED = ("no-messages", "messages-not-list", "max-tokens-0", "unknown-method", "not-json")
WARMUP_REQUESTS = 50
#: the event that ends a stream (transformers' server sends no ``[DONE]``): a chunk with a finish reason
FINISHED = re.compile(r'"finish_reason":\s*"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def call(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 300):
    """``(status, parsed JSON or text)`` of one plain request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read().decode()
        try:
            return response.status, json.loads(data)
        except json.JSONDecodeError:
            return response.status, data
    finally:
        conn.close()


def plan(rng: random.Random, args) -> dict:
    """One request's kind, method, length and token limit."""
    draw = rng.random()
    if draw < args.malformed_share:
        kind = rng.choice(MALFORMED)
    elif draw < args.malformed_share + args.disconnect_share:
        kind = "stream-disconnect"
    else:
        kind = rng.choices(("chat", "chat-stream", "completion"), weights=(0.5, 0.3, 0.2))[0]
    words = rng.choices([n for n, _ in LENGTHS], weights=[w for _, w in LENGTHS])[0]
    words = int(words * rng.uniform(0.8, 1.2))
    return {"kind": kind, "method": rng.choice(METHODS), "words": words, "max_tokens": rng.randint(4, 24),
            "seed": rng.randrange(1 << 30), "leave_after": rng.randint(1, 4)}  # fmt: skip


def body_of(request: dict) -> bytes:
    rng = random.Random(request["seed"])
    text = " ".join(rng.choice(WORDS) for _ in range(request["words"]))
    question = f"{text}\nIn one sentence, what does the river keep?"
    kind = request["kind"]
    if kind == "not-json":
        return b'{"messages": [ this is not json'
    body: dict = {"model": request["model"], "max_tokens": request["max_tokens"], "temperature": 0}
    if kind == "completion":
        body["prompt"] = question
    elif kind == "no-messages":
        pass
    elif kind == "messages-not-list":
        body["messages"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": question}]
    if kind == "max-tokens-0":
        body["max_tokens"] = 0
    if kind in ("chat-stream", "stream-disconnect"):
        body["stream"] = True
    method = {"method": "no-such-method"} if kind == "unknown-method" else request["method"]
    if method is not None:
        body["restkv"] = method
    return json.dumps(body).encode()


def read_events(response, count: int) -> int:
    """Read up to ``count`` more server-sent events (generated tokens), fewer when the stream ends first."""
    read = 0
    while read < count:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            read += 1
            if FINISHED.search(line.decode()):
                break
    return read


def send(port: int, request: dict) -> dict:
    """Send one planned request; the row recorded for it."""
    kind = request["kind"]
    path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
    row = {k: request[k] for k in ("index", "kind", "words", "max_tokens")}
    row["method"] = (request["method"] or {}).get("method", "server default")
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", path, body=body_of(request), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        row["status"] = response.status
        if kind in ("chat-stream", "stream-disconnect") and response.status == 200:
            first = response.readline()  # the first server-sent event
            row["first_event_s"] = round(time.perf_counter() - start, 4)
            if kind == "stream-disconnect":
                row["got_first_event"] = bool(first.strip())
                row["events_read"] = read_events(response, request["leave_after"])
                conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
            else:
                text = first.decode() + response.read().decode()
                row["done"] = FINISHED.search(text) is not None
        else:
            data = response.read().decode()
            try:
                parsed = json.loads(data)
            except json.JSONDecodeError:
                parsed = {"text": data[:200]}
            if response.status == 200:
                row["usage"] = parsed.get("usage")
            else:
                row["error"] = str(parsed.get("detail") or parsed.get("error") or parsed)[:300]
    except (OSError, http.client.HTTPException) as err:
        row["status"] = None
        row["error"] = f"{type(err).__name__}: {err}"
    finally:
        conn.close()
    row["latency_s"] = round(time.perf_counter() - start, 4)
    row["malformed"] = kind in MALFORMED
    return row


def is_error(row: dict) -> bool:
    """A malformed request must get a 4xx; every other one a 200 (a dropped stream: its first event)."""
    if row["malformed"]:
        return not (row["status"] is not None and 400 <= row["status"] < 500)
    if row["status"] != 200:
        return True
    if row["kind"] == "chat-stream":
        return not row.get("done")
    if row["kind"] == "stream-disconnect":
        return not row.get("got_first_event")
    return False


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, round(q * (len(values) - 1)))]  # noqa: E731
    mean = bootstrap_mean(values)
    return {"n": len(values), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": values[-1],
            "mean": round(mean.value, 3), "mean_95": [round(mean.low, 3), round(mean.high, 3)]}  # fmt: skip


def summarize(rows: list[dict], extra: dict) -> dict:
    errors = [r for r in rows if is_error(r)]
    rate = wilson(len(errors), len(rows))
    by_kind: dict[str, dict] = {}
    for row in rows:
        counts = by_kind.setdefault(row["kind"], {})
        counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
    latency = {
        kind: percentiles([r["latency_s"] for r in rows if r["kind"] == kind and r["status"] == 200])
        for kind in ("chat", "chat-stream", "completion")
        if any(r["kind"] == kind and r["status"] == 200 for r in rows)
    }
    firsts = [r["first_event_s"] for r in rows if "first_event_s" in r]
    if firsts:
        latency["stream first event"] = percentiles(firsts)
    return {
        "requests": len(rows),
        "malformed": sum(r["malformed"] for r in rows),
        "disconnected_mid_stream": sum(r["kind"] == "stream-disconnect" for r in rows),
        "errors": len(errors),
        "error_rate": [round(rate.value, 4), round(rate.low, 4), round(rate.high, 4)],
        "error_examples": [{k: r.get(k) for k in ("index", "kind", "method", "status", "error")} for r in errors[:10]],
        "status_by_kind": by_kind,
        "methods": sorted({r["method"] for r in rows}),
        "latency_s": latency,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--min-seconds", type=float, default=600)
    parser.add_argument("--max-seconds", type=float, default=2400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--disconnect-share", type=float, default=0.10)
    parser.add_argument("--malformed-share", type=float, default=0.02)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="restkv")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--num-blocks", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    restkv = Path(sys.executable).with_name("restkv")
    server_cmd = [str(restkv), "serve", "--model", args.model, "--method", args.method, "--budget", str(args.budget),
                  "--port", str(port), "--num-blocks", str(args.num_blocks)]  # fmt: skip
    log = (args.out / "server.log").open("w")
    server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT)
    started = time.time()
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}; see {args.out / 'server.log'}")
            try:
                if call(port, "GET", "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        setup_s = round(time.time() - started, 1)
        model_name = call(port, "GET", "/v1/models")[1]["data"][0]["id"]
        rss = {"after_start_mb": rss_mb(server.pid)}
        rss_timeline = []
        rows: list[dict] = []
        lock = threading.Lock()
        rng = random.Random(args.seed)
        sent = 0
        t0 = time.perf_counter()
        load_start = os.getloadavg()
        rows_file = (args.out / "rows.jsonl").open("w")

        def next_request() -> dict | None:
            nonlocal sent
            with lock:
                elapsed = time.perf_counter() - t0
                if elapsed > args.max_seconds or (sent >= args.requests and elapsed >= args.min_seconds):
                    return None
                request = plan(rng, args)
                request["index"], request["model"] = sent, model_name
                sent += 1
                return request

        def client() -> None:
            while (request := next_request()) is not None:
                row = send(port, request)
                row["t_s"] = round(time.perf_counter() - t0, 2)
                with lock:
                    rows.append(row)
                    rows_file.write(json.dumps(row) + "\n")
                    rows_file.flush()
                    if len(rows) == WARMUP_REQUESTS:
                        rss["after_warmup_mb"] = rss_mb(server.pid)
                    if len(rows) % 50 == 0:
                        print(f"{len(rows)} requests, {time.perf_counter() - t0:.0f} s, "
                              f"{sum(is_error(r) for r in rows)} errors", flush=True)  # fmt: skip

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.concurrency)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            rss_timeline.append((round(time.perf_counter() - t0), rss_mb(server.pid)))
            for thread in threads:
                thread.join(timeout=10 / len(threads))
        wall = time.perf_counter() - t0
        load_end = os.getloadavg()
        rows_file.close()
        time.sleep(3)  # cancelled streams are freed at the scheduler's next step
        _, stats = call(port, "GET", "/v1/restkv/stats")
        health = call(port, "GET", "/health")
        rss["end_mb"] = rss_mb(server.pid)
        stop_start = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            code = "killed after 120 s"
        stop_s = time.perf_counter() - stop_start
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    extra = {
        "leaked_blocks": None if stats["free_blocks"] is None else stats["total_blocks"] - stats["free_blocks"],
        "pool": {
            "free_blocks": stats["free_blocks"],
            "total_blocks": stats["total_blocks"],
            "compressions_recorded": len(stats["requests"]),
            "peak_decoding": stats["peak_decoding"],
        },  # fmt: skip
        "health_after": health,
        "rss_mb": rss,
        "rss_growth_after_warmup": None
        if not rss.get("after_warmup_mb")
        else round(rss["end_mb"] / rss["after_warmup_mb"] - 1, 4),
        "rss_timeline": rss_timeline,
        "sigterm": {"exit_code": code, "seconds": round(stop_s, 2)},
        "wall_s": round(wall, 1),
        "server_start_s": setup_s,
        "load_start": load_start,
        "load_end": load_end,
        "cpus": os.cpu_count(),
        "server_command": " ".join(server_cmd[1:]),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    summary = summarize(rows, extra)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rss_timeline", "status_by_kind")}, indent=1))


if __name__ == "__main__":
    main()
