"""A hostile zero-copy worker: run as another user in the daemon's group, with only the standard
library (it must not need the project), it tries every way into the daemon's region memory.

Input (JSON on stdin): ``pid`` of the daemon, ``region_socket``, ``shm_prefix``, ``own_grant``
(hex: a grant its own tenant was given), ``page_bytes``, ``slot`` (the page to read through it).
Output (JSON on stdout): what each attempt got. The region socket's protocol is spoken raw,
as documented in tierd.proto.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import socket
import struct
import sys
from pathlib import Path

MAGIC = b"TRG1"
OP_OPEN = 1
GRANT_BYTES = 32
REPLY_HEAD = struct.Struct(">BH")
FORGED_GRANTS = 64


def fetch(region_socket: str, grant: bytes) -> tuple[int, int | None]:
    """(status, fd or None) of one OPEN request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30.0)
        conn.connect(region_socket)
        conn.sendall(MAGIC + bytes([OP_OPEN]) + grant)
        data, fds, _flags, _addr = socket.recv_fds(conn, 2048, 1)
    status, _length = REPLY_HEAD.unpack_from(data)
    return status, (fds[0] if fds else None)


def try_proc(pid: int) -> dict[str, int]:
    """Open the daemon's descriptors and mapped files through /proc, as a same-uid attacker would."""
    opened = denied = 0
    for folder in (f"/proc/{pid}/fd", f"/proc/{pid}/map_files"):
        try:
            names = os.listdir(folder)
        except PermissionError:
            denied += 1
            continue
        for name in names:
            try:
                fd = os.open(f"{folder}/{name}", os.O_RDWR)
            except OSError:
                denied += 1
                continue
            os.close(fd)
            opened += 1
    return {"opened": opened, "denied": denied}


def main() -> None:
    job = json.load(sys.stdin)
    result: dict[str, object] = {"uid": os.getuid(), "groups": sorted(os.getgroups())}
    result["shm_files"] = sorted(p.name for p in Path("/dev/shm").glob(f"{job['shm_prefix']}*"))
    result["proc"] = try_proc(job["pid"])
    forged = [fetch(job["region_socket"], secrets.token_bytes(GRANT_BYTES))
              for _ in range(FORGED_GRANTS)]
    result["forged_opened"] = sum(1 for status, fd in forged if fd is not None)
    result["forged_statuses"] = sorted({status for status, _fd in forged})
    status, fd = fetch(job["region_socket"], bytes.fromhex(job["own_grant"]))
    result["own_status"] = status
    if fd is not None:
        start = job["slot"] * job["page_bytes"]
        with mmap.mmap(fd, 0, flags=mmap.MAP_SHARED) as own:
            result["own_page_hex"] = own[start:start + job["page_bytes"]].hex()
        os.close(fd)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
