#!/usr/bin/env python3
"""The client side of tests/s3.rs's stall drill: clients that stop sending in the middle of
a request must not hold the endpoint. A request head left half-sent is closed within the
header-read timeout (10 s); a signed PUT whose body stops after 64 KiB of the 4 MiB it
announced fails with a 503 within the body idle timeout (20 s), and a normal PUT and GET
are served meanwhile.

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


def stalled_body():
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "stalled"}, ExpiresIn=600
    )
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((host, port))
    head = (
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: {4 * 1024 * 1024}\r\n\r\n"
    )
    sock.sendall(head.encode() + os.urandom(64 * 1024))
    results["stalled_body"] = wait_for_answer(sock, BODY_IDLE_TIMEOUT_S * 3)


threads = [threading.Thread(target=half_head), threading.Thread(target=stalled_body)]
for thread in threads:
    thread.start()
time.sleep(1)
body = os.urandom(3 * 1024 * 1024 + 5)
s3.put_object(Bucket=BUCKET, Key="while-stalled", Body=body)
check(
    s3.get_object(Bucket=BUCKET, Key="while-stalled")["Body"].read() == body,
    "a PUT and a GET are served while two clients stall",
)
for thread in threads:
    thread.join()

received, seconds = results["half_head"]
check(
    seconds < HEADER_READ_TIMEOUT_S * 2,
    f"a half-sent head is closed after {seconds:.1f} s (timeout {HEADER_READ_TIMEOUT_S} s)",
)
received, seconds = results["stalled_body"]
check(
    received.startswith(b"HTTP/1.1 503"),
    f"a stalled body gets 503 (got {received[:60]!r})",
)
check(
    BODY_IDLE_TIMEOUT_S - 2 < seconds < BODY_IDLE_TIMEOUT_S * 2,
    f"... after {seconds:.1f} s (timeout {BODY_IDLE_TIMEOUT_S} s)",
)
listing = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
check(
    "stalled" not in [item["Key"] for item in listing],
    "the stalled object is not in the bucket",
)
