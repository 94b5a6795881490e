#!/usr/bin/env python3
"""The client side of tests/s3.rs's scope and upload drill: scoped keys (one bucket, read
only) as boto3 and aws-cli meet them, and ListMultipartUploads with prefixes, delimiters
and pages.

Usage: s3_scopes.py setup | after-cleanup
Environment: BRAMBLE_S3_ENDPOINT, BRAMBLE_S3_KEYS (JSON: name -> [access key, secret] for
"full", "reader" and "docs"), BRAMBLE_S3_WORKDIR. Exits non-zero on the first failure.
"""
import json
import os
import subprocess
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["BRAMBLE_S3_ENDPOINT"]
KEYS = json.loads(os.environ["BRAMBLE_S3_KEYS"])
WORK = os.environ["BRAMBLE_S3_WORKDIR"]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def client(name):
    key, secret = KEYS[name]
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def error_code(call):
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"]
    return None


def aws(name, *arguments):
    key, secret = KEYS[name]
    environment = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
                       AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
                       AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    return subprocess.run(["aws", "--endpoint-url", ENDPOINT, *arguments],
                          capture_output=True, text=True, env=environment)


def all_uploads(s3, **arguments):
    """Every upload in progress, page by page through the markers."""
    seen, markers = [], {}
    for _ in range(100):
        page = s3.list_multipart_uploads(Bucket="photos", **arguments, **markers)
        seen.extend((upload["Key"], upload["UploadId"]) for upload in page.get("Uploads", []))
        if not page.get("IsTruncated"):
            return seen
        markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    check(False, "the upload listing ends")


def setup():
    full, reader, docs = client("full"), client("reader"), client("docs")
    full.put_object(Bucket="photos", Key="a.jpg", Body=b"a photo")
    full.put_object(Bucket="docs", Key="b.txt", Body=b"a text")

    # A read-only key for one bucket.
    check(reader.get_object(Bucket="photos", Key="a.jpg")["Body"].read() == b"a photo", "reader: get in its bucket")
    check([o["Key"] for o in reader.list_objects_v2(Bucket="photos").get("Contents", [])] == ["a.jpg"], "reader: list its bucket")
    check(error_code(lambda: reader.put_object(Bucket="photos", Key="new.jpg", Body=b"x")) == "AccessDenied", "reader: put refused (read only)")
    check(error_code(lambda: reader.delete_object(Bucket="photos", Key="a.jpg")) == "AccessDenied", "reader: delete refused (read only)")
    check(error_code(lambda: reader.get_object(Bucket="docs", Key="b.txt")) == "AccessDenied", "reader: another bucket refused")
    check([b["Name"] for b in reader.list_buckets()["Buckets"]] == ["photos"], "reader: lists only its bucket")
    check(full.head_object(Bucket="photos", Key="a.jpg")["ContentLength"] == 7, "the refused delete deleted nothing")
    listed = aws("reader", "s3", "ls", "s3://docs/")
    check(listed.returncode != 0 and "AccessDenied" in listed.stderr, "reader: aws s3 ls of another bucket refused")

    # A read-write key for one bucket: its copies may not read other buckets.
    docs.put_object(Bucket="docs", Key="c.txt", Body=b"written")
    check(docs.get_object(Bucket="docs", Key="c.txt")["Body"].read() == b"written", "docs key: put and get in its bucket")
    check(error_code(lambda: docs.copy_object(Bucket="docs", Key="stolen.jpg", CopySource={"Bucket": "photos", "Key": "a.jpg"})) == "AccessDenied",
          "docs key: a copy from another bucket refused")
    check(error_code(lambda: full.head_object(Bucket="docs", Key="stolen.jpg")) in ("404", "NoSuchKey", "NotFound"), "the refused copy made nothing")
    docs.copy_object(Bucket="docs", Key="c-copy.txt", CopySource={"Bucket": "docs", "Key": "c.txt"})
    check(docs.get_object(Bucket="docs", Key="c-copy.txt")["Body"].read() == b"written", "docs key: a copy within its bucket")
    check([b["Name"] for b in docs.list_buckets()["Buckets"]] == ["docs"], "docs key: lists only its bucket")
    check(sorted(b["Name"] for b in full.list_buckets()["Buckets"]) == ["docs", "photos"], "an unscoped key lists every bucket")

    # Uploads in progress: four, under two prefixes, one with a part.
    created = []
    for key in ["x/one", "x/two", "y", "y"]:
        created.append((key, full.create_multipart_upload(Bucket="photos", Key=key)["UploadId"]))
    full.upload_part(Bucket="photos", Key="y", UploadId=created[2][1], PartNumber=1, Body=b"p" * 1024)
    expected = sorted(created)
    everything = full.list_multipart_uploads(Bucket="photos")
    check([(u["Key"], u["UploadId"]) for u in everything.get("Uploads", [])] == expected, "ListMultipartUploads: every upload, by key then upload id")
    check(not everything.get("IsTruncated"), "ListMultipartUploads: not truncated")
    prefixed = full.list_multipart_uploads(Bucket="photos", Prefix="x/")
    check([u["Key"] for u in prefixed.get("Uploads", [])] == ["x/one", "x/two"], "ListMultipartUploads: a prefix")
    rolled = full.list_multipart_uploads(Bucket="photos", Delimiter="/")
    check([u["Key"] for u in rolled.get("Uploads", [])] == ["y", "y"], "ListMultipartUploads: a delimiter leaves the keys without it")
    check([p["Prefix"] for p in rolled.get("CommonPrefixes", [])] == ["x/"], "ListMultipartUploads: and rolls the rest into common prefixes")
    check(all_uploads(full, MaxUploads=1) == expected, "ListMultipartUploads: one per page, through the markers, each once")
    listed = aws("full", "s3api", "list-multipart-uploads", "--bucket", "photos")
    check(listed.returncode == 0 and len(json.loads(listed.stdout)["Uploads"]) == 4, "aws s3api list-multipart-uploads")
    check(all_uploads(reader) == expected, "reader: may list uploads (a read)")
    check(error_code(lambda: reader.abort_multipart_upload(Bucket="photos", Key="y", UploadId=created[2][1])) == "AccessDenied", "reader: may not abort one")
    # One aborted by hand; the rest is left for `bramble s3 cleanup-uploads`.
    full.abort_multipart_upload(Bucket="photos", Key="x/one", UploadId=created[0][1])
    check(len(all_uploads(full)) == 3, "an aborted upload leaves the listing")


def after_cleanup():
    full = client("full")
    check(all_uploads(full) == [], "after cleanup-uploads no upload is in progress")
    check(full.get_object(Bucket="photos", Key="a.jpg")["Body"].read() == b"a photo", "objects are untouched by the cleanup")


{"setup": setup, "after-cleanup": after_cleanup}[sys.argv[1]]()
