#!/usr/bin/env python3
"""The S3 drill's client side (tests/s3.rs runs it against a real emulated cluster):
boto3, aws-cli and rclone talk to Bramble's S3 endpoint exactly as they would to AWS.

Environment: BRAMBLE_S3_ENDPOINT (http://host:port), BRAMBLE_S3_KEY, BRAMBLE_S3_SECRET,
BRAMBLE_S3_BUCKET, BRAMBLE_S3_WORKDIR (a scratch directory). Exits non-zero on the first
failure with a message naming it.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["BRAMBLE_S3_ENDPOINT"]
KEY = os.environ["BRAMBLE_S3_KEY"]
SECRET = os.environ["BRAMBLE_S3_SECRET"]
BUCKET = os.environ["BRAMBLE_S3_BUCKET"]
WORK = os.environ["BRAMBLE_S3_WORKDIR"]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def client(secret=SECRET):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=KEY,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def error_code(call):
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]
    return None, 200


s3 = client()
random_bytes = os.urandom(64 * 1024 * 1024)
big_path = os.path.join(WORK, "big.bin")
with open(big_path, "wb") as handle:
    handle.write(random_bytes)

# Put, get, ranges, metadata, ETag = MD5 (boto3 >= 1.36 sends CRC trailers: they must not
# end up in the object).
s3.put_object(Bucket=BUCKET, Key="docs/a.txt", Body=b"alpha", Metadata={"mtime": "1700000000"})
got = s3.get_object(Bucket=BUCKET, Key="docs/a.txt")
check(got["Body"].read() == b"alpha", "put then get returns the body, without checksum trailers")
check(got["Metadata"] == {"mtime": "1700000000"}, "user metadata (x-amz-meta-*) round-trips")
check(got["ETag"].strip('"') == hashlib.md5(b"alpha").hexdigest(), "a single-part ETag is the body's MD5")
for key in ["docs/b.txt", "docs/sub/c.txt", "docs/sub/d.txt", "top.txt"]:
    s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
ranged = s3.get_object(Bucket=BUCKET, Key="docs/sub/c.txt", Range="bytes=5-8")
check(ranged["Body"].read() == b"sub/" and ranged["ContentRange"] == "bytes 5-8/14", "get with a range")
check(s3.head_object(Bucket=BUCKET, Key="top.txt")["ContentLength"] == 7, "head")

# Listing: prefixes, delimiters, pages.
listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="docs/", Delimiter="/")
check([o["Key"] for o in listed.get("Contents", [])] == ["docs/a.txt", "docs/b.txt"], "list v2 with a prefix and a delimiter: objects")
check([p["Prefix"] for p in listed.get("CommonPrefixes", [])] == ["docs/sub/"], "list v2 with a prefix and a delimiter: common prefixes")
keys, token = [], None
while True:
    arguments = {"Bucket": BUCKET, "MaxKeys": 2}
    if token:
        arguments["ContinuationToken"] = token
    page = s3.list_objects_v2(**arguments)
    keys += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    token = page["NextContinuationToken"]
check(keys == ["docs/a.txt", "docs/b.txt", "docs/sub/c.txt", "docs/sub/d.txt", "top.txt"], "list v2 in pages of 2 with continuation tokens")
after = s3.list_objects_v2(Bucket=BUCKET, StartAfter="docs/sub/c.txt")
check([o["Key"] for o in after["Contents"]] == ["docs/sub/d.txt", "top.txt"], "list v2 with start-after")
v1 = s3.list_objects(Bucket=BUCKET, Prefix="docs/sub/")
check([o["Key"] for o in v1["Contents"]] == ["docs/sub/c.txt", "docs/sub/d.txt"], "list v1 with a prefix")

# Copy, delete, delete many.
s3.copy_object(Bucket=BUCKET, Key="copy.txt", CopySource={"Bucket": BUCKET, "Key": "docs/a.txt"})
check(s3.get_object(Bucket=BUCKET, Key="copy.txt")["Body"].read() == b"alpha", "copy")
s3.delete_object(Bucket=BUCKET, Key="copy.txt")
check(error_code(lambda: s3.head_object(Bucket=BUCKET, Key="copy.txt"))[1] == 404, "delete, then head is 404")
deleted = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "docs/b.txt"}, {"Key": "top.txt"}]})
check(len(deleted["Deleted"]) == 2, "delete objects")

# A 64 MiB multipart upload (8 MiB parts): ETag md5(concat of part md5s)-N.
s3.upload_file(big_path, BUCKET, "big/big.bin", Config=boto3.s3.transfer.TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024))
head = s3.head_object(Bucket=BUCKET, Key="big/big.bin")
parts = [hashlib.md5(random_bytes[i:i + 8 * 1024 * 1024]).digest() for i in range(0, len(random_bytes), 8 * 1024 * 1024)]
expected = hashlib.md5(b"".join(parts)).hexdigest() + f"-{len(parts)}"
check(head["ETag"].strip('"') == expected, f"multipart ETag is md5 of part md5s -N ({expected})")
back = s3.get_object(Bucket=BUCKET, Key="big/big.bin")["Body"].read()
check(hashlib.sha1(back).hexdigest() == hashlib.sha1(random_bytes).hexdigest(), "the 64 MiB multipart object reads back whole")
tail = s3.get_object(Bucket=BUCKET, Key="big/big.bin", Range="bytes=-10")["Body"].read()
check(tail == random_bytes[-10:], "a suffix range across parts")

# Bad input: small non-last parts, a wrong signature, presigned URLs.
upload = s3.create_multipart_upload(Bucket=BUCKET, Key="small-parts")
etags = [s3.upload_part(Bucket=BUCKET, Key="small-parts", UploadId=upload["UploadId"], PartNumber=n, Body=b"x" * 1024)["ETag"] for n in (1, 2)]
code, _ = error_code(lambda: s3.complete_multipart_upload(Bucket=BUCKET, Key="small-parts", UploadId=upload["UploadId"], MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]}))
check(code == "EntityTooSmall", "parts under 5 MiB that are not the last are refused")
s3.abort_multipart_upload(Bucket=BUCKET, Key="small-parts", UploadId=upload["UploadId"])
code, status = error_code(lambda: client(secret="0" * 40).list_objects_v2(Bucket=BUCKET))
check(status == 403, f"a wrong signature is a 403 ({code})")
url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "docs/a.txt"}, ExpiresIn=60)
check(urllib.request.urlopen(url).read() == b"alpha", "a presigned URL works")
expired = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "docs/a.txt"}, ExpiresIn=1)
time.sleep(2)
try:
    urllib.request.urlopen(expired)
    check(False, "an expired presigned URL is refused")
except urllib.error.HTTPError as error:
    check(error.code == 403, f"an expired presigned URL is a 403 ({error.code})")
try:
    urllib.request.urlopen(f"{ENDPOINT}/{BUCKET}/docs/a.txt")
    check(False, "an anonymous request is refused")
except urllib.error.HTTPError as error:
    check(error.code == 403, "an anonymous request is a 403")
code, _ = error_code(lambda: s3.put_object(Bucket=BUCKET, Key="a/../escape", Body=b"x"))
check(code is not None, f"a key with .. is refused ({code})")

# aws-cli and rclone, as their users run them.
environment = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
aws = ["aws", "--endpoint-url", ENDPOINT, "s3"]
subprocess.run(aws + ["cp", big_path, f"s3://{BUCKET}/cli/big.bin", "--only-show-errors"], env=environment, check=True)
out = os.path.join(WORK, "cli.bin")
subprocess.run(aws + ["cp", f"s3://{BUCKET}/cli/big.bin", out, "--only-show-errors"], env=environment, check=True)
check(open(out, "rb").read() == random_bytes, "aws s3 cp up and down (multipart)")
listing = subprocess.run(aws + ["ls", f"s3://{BUCKET}/cli/"], env=environment, check=True, capture_output=True, text=True).stdout
check("big.bin" in listing, "aws s3 ls")
# rclone 1.60 refuses a custom CA bundle on a plain-HTTP endpoint; this endpoint uses none.
base_env = {name: value for name, value in os.environ.items() if name != "AWS_CA_BUNDLE"}
rclone_env = dict(base_env, RCLONE_CONFIG_B_TYPE="s3", RCLONE_CONFIG_B_PROVIDER="Other", RCLONE_CONFIG_B_ACCESS_KEY_ID=KEY, RCLONE_CONFIG_B_SECRET_ACCESS_KEY=SECRET, RCLONE_CONFIG_B_ENDPOINT=ENDPOINT, RCLONE_CONFIG_B_REGION="us-east-1")
tree = os.path.join(WORK, "tree")
os.makedirs(os.path.join(tree, "nested"), exist_ok=True)
for name, body in [("one.txt", b"1"), ("nested/two.txt", b"22")]:
    with open(os.path.join(tree, name), "wb") as handle:
        handle.write(body)
subprocess.run(["rclone", "copy", tree, f"b:{BUCKET}/rclone"], env=rclone_env, check=True)
check_run = subprocess.run(["rclone", "check", tree, f"b:{BUCKET}/rclone"], env=rclone_env, capture_output=True, text=True)
check(check_run.returncode == 0, f"rclone copy then rclone check ({check_run.stderr.strip()[-200:]})")
print(json.dumps({"passed": True}))
