#!/usr/bin/env python3
"""Writes in place through `bramble mount`, checked against the same writes on a local disk.

Usage: mount_writes.py MOUNTED_DIR LOCAL_DIR [OTHER_MOUNT_DIR]

Every step does the same system calls on a file under MOUNTED_DIR (a directory inside a
`bramble mount`) and on its twin under LOCAL_DIR, then compares the two files' sizes and
bytes through fresh opens. Reads made through a handle that also writes are compared as
they happen. Prints one line per step and "all steps match" at the end; exits 1 at the
first difference, naming the step and the first differing offset.

With OTHER_MOUNT_DIR (the same directory of the same volume, mounted through another
agent), eight processes, four on each mount, write interleaved 4 KiB slots of one file at
once, each write its own open, pwrite and close: every write must be there at the end;
and small files written one after another through MOUNTED_DIR (which may be a
`--flush-behind` mount) must, after an fsync of their directory, be there through the
other mount with the same bytes.
"""

import hashlib
import multiprocessing
import os
import random
import sys

MOUNTED, LOCAL = sys.argv[1], sys.argv[2]
OTHER = sys.argv[3] if len(sys.argv) > 3 else None
rng = random.Random(20261130)


def both(name):
    return os.path.join(MOUNTED, name), os.path.join(LOCAL, name)


def fail(step, message):
    print(f"FAIL {step}: {message}", flush=True)
    sys.exit(1)


def compare(step, name):
    mounted, local = both(name)
    with open(mounted, "rb") as handle:
        got = handle.read()
    with open(local, "rb") as handle:
        want = handle.read()
    if got != want:
        first = next(
            (index for index, (a, b) in enumerate(zip(got, want)) if a != b),
            min(len(got), len(want)),
        )
        fail(step, f"{name}: {len(got)} bytes through the mount, {len(want)} locally; first difference at {first}")
    if os.stat(mounted).st_size != len(want):
        fail(step, f"{name}: stat says {os.stat(mounted).st_size} bytes, the file has {len(want)}")
    print(f"ok {step}: {name}, {len(want)} bytes, sha1 {hashlib.sha1(want).hexdigest()[:12]}", flush=True)


def on_both(name, flags, action):
    """Runs action(fd) on the mounted file and on the local one."""
    results = []
    for path in both(name):
        fd = os.open(path, flags, 0o644)
        try:
            results.append(action(fd))
        finally:
            os.close(fd)
    return results


def random_bytes(length):
    return rng.randbytes(length)


# 1. A file written front to back (the streaming path), then changed in the middle.
start = random_bytes(3 * 1024 * 1024 + 123)
on_both("middle.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, lambda fd: os.write(fd, start))
compare("write whole", "middle.bin")
patch = random_bytes(5000)
on_both("middle.bin", os.O_WRONLY, lambda fd: os.pwrite(fd, patch, 1000))
compare("pwrite in the middle", "middle.bin")
edge = random_bytes(300)
on_both("middle.bin", os.O_WRONLY, lambda fd: os.pwrite(fd, edge, 1024 * 1024 - 150))
compare("pwrite across a block boundary", "middle.bin")

# 2. Random writes and reads on one read-write handle: each read must see the writes
#    before it.
operations = []
size = len(start)
for _ in range(120):
    if rng.random() < 0.7:
        length = rng.randint(1, 70_000)
        offset = rng.randint(0, size + 50_000)
        operations.append(("write", offset, random_bytes(length)))
        size = max(size, offset + length)
    else:
        operations.append(("read", rng.randint(0, size), rng.randint(1, 200_000)))


def replay(fd):
    reads = []
    for operation in operations:
        if operation[0] == "write":
            os.pwrite(fd, operation[2], operation[1])
        else:
            reads.append(os.pread(fd, operation[2], operation[1]))
    return reads


mounted_reads, local_reads = on_both("middle.bin", os.O_RDWR, replay)
for index, (got, want) in enumerate(zip(mounted_reads, local_reads)):
    if got != want:
        fail("reads between random writes", f"read {index} returned {len(got)} bytes, {len(want)} locally, not the same")
print(f"ok reads between random writes: {len(mounted_reads)} reads matched", flush=True)
compare("random writes on a read-write handle", "middle.bin")

# 3. Truncates: through the handle and by path, down and up.
on_both("middle.bin", os.O_RDWR, lambda fd: os.ftruncate(fd, 777_777))
compare("ftruncate down", "middle.bin")
on_both("middle.bin", os.O_RDWR, lambda fd: os.ftruncate(fd, 3 * 1024 * 1024 + 5))
compare("ftruncate up (zeros)", "middle.bin")
for path in both("middle.bin"):
    os.truncate(path, 2 * 1024 * 1024)
compare("truncate by path", "middle.bin")

# 4. Appends to an existing file, as a log is written.
for round_number in range(5):
    line = f"line {round_number} ".encode() * rng.randint(1, 400)
    on_both("middle.bin", os.O_WRONLY | os.O_APPEND, lambda fd: os.write(fd, line))
compare("appends", "middle.bin")

# 5. A sparse file: one byte far past the end of a new file.
on_both("sparse.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, lambda fd: os.pwrite(fd, b"x", 5 * 1024 * 1024))
compare("write past the end of a new file", "sparse.bin")

# 6. More held writes than the mount keeps (it sends them before the close).
large = random_bytes(20 * 1024 * 1024)
on_both("large.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, lambda fd: os.write(fd, large))
writes = [(rng.randint(0, len(large)), random_bytes(1024 * 1024)) for _ in range(12)]
on_both("large.bin", os.O_WRONLY, lambda fd: [os.pwrite(fd, data, offset) for offset, data in writes])
compare("12 MiB of scattered writes in one open", "large.bin")

# 7. A file written backwards (each write before the last one).
def backwards(fd):
    for index in reversed(range(40)):
        os.pwrite(fd, bytes([index]) * 3000, index * 3000)


on_both("backwards.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, backwards)
compare("written backwards", "backwards.bin")

# 8. A write far past the largest file a volume holds is refused (at the write or at the
#    close) and changes nothing.
refused_at = None
path = os.path.join(MOUNTED, "backwards.bin")
fd = os.open(path, os.O_WRONLY)
try:
    os.pwrite(fd, b"far", 1 << 50)
except OSError as error:
    refused_at = f"pwrite: {error.strerror}"
try:
    os.close(fd)
except OSError as error:
    refused_at = refused_at or f"close: {error.strerror}"
if refused_at is None:
    fail("write past the largest file", "a write at 1 PiB was accepted")
print(f"ok write past the largest file: refused at {refused_at}", flush=True)
compare("unchanged after the refused write", "backwards.bin")

# 9. Writers on two mounts (two agents) patching one file at once.
def writer(arguments):
    directory, name, index, writers, slots, slot_bytes = arguments
    path = os.path.join(directory, name)
    for slot in range(slots):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes([index + 1]) * slot_bytes, (slot * writers + index) * slot_bytes)
        finally:
            os.close(fd)


def concurrent_writers(step, name, writers, slots, slot_bytes):
    """`writers` processes, alternating between the two mounts, each writing its own
    `slots` slots of `slot_bytes` into one file; no write may be lost."""
    with open(os.path.join(MOUNTED, name), "wb") as handle:
        handle.write(bytes(writers * slots * slot_bytes))
        # Stored before the other mount opens it, also where closes go behind.
        handle.flush()
        os.fsync(handle.fileno())
    mounts = [MOUNTED, OTHER]
    with multiprocessing.Pool(writers) as pool:
        pool.map(writer, [(mounts[index % 2], name, index, writers, slots, slot_bytes) for index in range(writers)])
    with open(os.path.join(MOUNTED, name), "rb") as handle:
        shared = handle.read()
    lost = [
        slot
        for slot in range(writers * slots)
        if shared[slot * slot_bytes : (slot + 1) * slot_bytes] != bytes([slot % writers + 1]) * slot_bytes
    ]
    if len(shared) != writers * slots * slot_bytes or lost:
        fail(step, f"{len(lost)} of {writers * slots} writes lost, {len(shared)} bytes")
    print(f"ok {step}: {writers * slots} writes from {writers} processes on two mounts, none lost", flush=True)


if OTHER:
    concurrent_writers("concurrent writers", "shared.bin", 8, 40, 4096)

# 10. Small files, which keep their bytes in their record (at most 4 KiB): written,
#     changed in the middle, grown past 4 KiB (to blocks), cut back (to the record),
#     extended with zeros to exactly 4 KiB, and patched by writers on both mounts at once.
note = random_bytes(100)
on_both("note.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, lambda fd: os.write(fd, note))
compare("small file", "note.txt")
on_both("note.txt", os.O_WRONLY, lambda fd: os.pwrite(fd, b"middle", 40))
compare("small file changed in the middle", "note.txt")
more = random_bytes(3900)
on_both("note.txt", os.O_WRONLY | os.O_APPEND, lambda fd: os.write(fd, more))
compare("small file appended to under 4 KiB", "note.txt")
past = random_bytes(300)
on_both("note.txt", os.O_WRONLY | os.O_APPEND, lambda fd: os.write(fd, past))
compare("small file grown past 4 KiB", "note.txt")
on_both("note.txt", os.O_RDWR, lambda fd: os.ftruncate(fd, 10))
compare("file cut back to 10 bytes", "note.txt")
on_both("note.txt", os.O_RDWR, lambda fd: os.ftruncate(fd, 4096))
compare("small file extended with zeros to 4 KiB", "note.txt")
if OTHER:
    concurrent_writers("concurrent writers of a small file", "small-shared.bin", 4, 8, 64)

# 11. Many small files one after another, as `cp -r` writes them (with --flush-behind their
#     closes and unlinks return before their commits): each is read back, renamed or
#     removed at once through the same mount (some made again at once after the removal),
#     the directory is listed; after an fsync of the directory the other mount sees exactly
#     the same files and bytes.
directory = "many-small"
os.mkdir(os.path.join(MOUNTED, directory))
os.mkdir(os.path.join(LOCAL, directory))
expected = {}
for index in range(120):
    name = f"{directory}/f{index}"
    data = random_bytes(rng.randrange(0, 4097))
    on_both(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, lambda fd: os.write(fd, data))
    with open(os.path.join(MOUNTED, name), "rb") as handle:
        if handle.read() != data:
            fail("small files one after another", f"{name} read back different bytes right after its close")
    if index % 10 == 3:
        for root in (MOUNTED, LOCAL):
            os.rename(os.path.join(root, name), os.path.join(root, name + ".moved"))
        expected[f"f{index}.moved"] = data
    elif index % 10 == 7:
        for root in (MOUNTED, LOCAL):
            os.unlink(os.path.join(root, name))
        # With --flush-behind the removal may still be landing: the name is gone at once,
        # and a new file of the same name made at once is the one that stays.
        if os.path.exists(os.path.join(MOUNTED, name)):
            fail("small files one after another", f"{name} is still there right after its unlink")
        if index % 20 == 7:
            again = random_bytes(rng.randrange(0, 4097))
            on_both(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, lambda fd: os.write(fd, again))
            expected[f"f{index}"] = again
    else:
        expected[f"f{index}"] = data
listed = sorted(os.listdir(os.path.join(MOUNTED, directory)))
if listed != sorted(expected):
    fail("small files one after another", f"the listing has {len(listed)} names, {len(expected)} expected")
for name in ("f0", "f3.moved", "f119"):
    compare("small files one after another", f"{directory}/{name}")
fd = os.open(os.path.join(MOUNTED, directory), os.O_RDONLY)
try:
    os.fsync(fd)
finally:
    os.close(fd)
if OTHER:
    seen = sorted(os.listdir(os.path.join(OTHER, directory)))
    if seen != sorted(expected):
        fail("small files seen by the other mount", f"it lists {len(seen)} names, {len(expected)} expected")
    for name, data in expected.items():
        with open(os.path.join(OTHER, directory, name), "rb") as handle:
            if handle.read() != data:
                fail("small files seen by the other mount", f"{name} has different bytes there")
    print(f"ok small files seen by the other mount: {len(expected)} files", flush=True)
print(f"ok small files one after another: {len(expected)} files, renames and removals", flush=True)
print("all steps match", flush=True)
