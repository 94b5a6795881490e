#!/usr/bin/env python3
"""The client side of tests/s3.rs's stall drill: clients that stop sending in the middle of
a request must not hold the endpoint. A request head left half-sent is closed within the
header-read timeout (10 s); signed PUTs whose bodies stop after 64 KiB of the 4 MiB they
announced fail with a 503 within the body idle timeout (20 s), and a normal PUT and GET
are served meanwhile. There are more stalled bodies than blocks in the gateway's write
budget (8 MiB), so the normal PUT is served within seconds only because a paused client's
part of a block is stored early when others want the budget (without that, the PUT
waited for the stalled ones' 20 s timeout). A PUT that pauses for 3 s after its first
64 KiB while the stalled ones want the budget, then sends the rest, is stored whole and
right (its first 64 KiB a block of their own: tests/s3.rs counts its blocks).

Environment: BRAMBLE_S3_ENDPOINT, BRAMBLE_S3_KEY, BRAMBLE_S3_SECRET, BRAMBLE_S3_BUCKET.
Exits non-zero on the first failure.
"""
import os
import socket
import sys
import threading
import time
import urllib.parse

import boto3
from botocore.config import Config

ENDPOINT = os.environ["BRAMBLE_S3_ENDPOINT"]
BUCKET = os.environ["BRAMBLE_S3_BUCKET"]
HEADER_READ_TIMEOUT_S = 10
BODY_IDLE_TIMEOUT_S = 20


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    aws_access_key_id=os.environ["BRAMBLE_S3_KEY"],
    aws_secret_access_key=os.environ["BRAMBLE_S3_SECRET"],
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
address = urllib.parse.urlsplit(ENDPOINT)
host, port = address.hostname, address.port


def wait_for_answer(sock, limit_s):
    """Reads until the server answers and closes, or `limit_s` passes; returns what it
    sent and the seconds it took."""
    sock.settimeout(limit_s)
    started = time.monotonic()
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


results = {}


def half_head():
    sock = socket.create_connection((host, port))
    sock.sendall(f"PUT /{BUCKET}/half-head HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
    results["half_head"] = wait_for_answer(sock, HEADER_READ_TIMEOUT_S * 3)


STALLED_BODIES = 10
# Far under the stalled bodies' 20 s timeout, far over the 1 s pause that releases a block.
PUT_WHILE_STALLED_LIMIT_S = 10


def presigned_put(key, size, first_bytes):
    """A connection that has sent a presigned PUT's head announcing `size` bytes, and
    `first_bytes` of its body."""
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600
    )
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((host, port))
    head = (
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode() + first_bytes)
    return sock


def stalled_body(number):
    sock = presigned_put(f"stalled-{number}", 4 * 1024 * 1024, os.urandom(64 * 1024))
    results[f"stalled_body_{number}"] = wait_for_answer(sock, BODY_IDLE_TIMEOUT_S * 3)


RESUMED_SIZE = 4 * 1024 * 1024
RESUMED_BODY = os.urandom(RESUMED_SIZE)


def resumed_body():
    sock = presigned_put("resumed", RESUMED_SIZE, RESUMED_BODY[: 64 * 1024])
    time.sleep(3)
    sock.sendall(RESUMED_BODY[64 * 1024 :])
    results["resumed_body"] = wait_for_answer(sock, BODY_IDLE_TIMEOUT_S)


# The resumed body holds budget first, so its pause is one the stalled ones wait behind.
resumed = threading.Thread(target=resumed_body)
resumed.start()
time.sleep(0.5)
threads = [resumed, threading.Thread(target=half_head)] + [
    threading.Thread(target=stalled_body, args=(number,)) for number in range(STALLED_BODIES)
]
for thread in threads[1:]:
    thread.start()
time.sleep(1)
body = os.urandom(3 * 1024 * 1024 + 5)
started = time.monotonic()
s3.put_object(Bucket=BUCKET, Key="while-stalled", Body=body)
put_seconds = time.monotonic() - started
check(
    put_seconds < PUT_WHILE_STALLED_LIMIT_S,
    f"a PUT is served in {put_seconds:.1f} s while {STALLED_BODIES} bodies stall "
    f"(limit {PUT_WHILE_STALLED_LIMIT_S} s; they time out after {BODY_IDLE_TIMEOUT_S} s)",
)
check(
    s3.get_object(Bucket=BUCKET, Key="while-stalled")["Body"].read() == body,
    f"a GET reads it back while {STALLED_BODIES + 1} clients stall",
)
for thread in threads:
    thread.join()

received, seconds = results["half_head"]
check(
    seconds < HEADER_READ_TIMEOUT_S * 2,
    f"a half-sent head is closed after {seconds:.1f} s (timeout {HEADER_READ_TIMEOUT_S} s)",
)
received, seconds = results["resumed_body"]
check(received.startswith(b"HTTP/1.1 200"), f"a paused and resumed PUT gets 200 ({received[:60]!r})")
check(
    s3.get_object(Bucket=BUCKET, Key="resumed")["Body"].read() == RESUMED_BODY,
    "... and reads back whole and right",
)
for number in range(STALLED_BODIES):
    received, seconds = results[f"stalled_body_{number}"]
    check(
        received.startswith(b"HTTP/1.1 503"),
        f"stalled body {number} gets 503 (got {received[:60]!r})",
    )
    check(
        BODY_IDLE_TIMEOUT_S - 2 < seconds < BODY_IDLE_TIMEOUT_S * 2,
        f"... after {seconds:.1f} s (timeout {BODY_IDLE_TIMEOUT_S} s)",
    )
listing = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
check(
    not any(key.startswith("stalled") for key in listing),
    f"no stalled object is in the bucket ({listing})",
)
