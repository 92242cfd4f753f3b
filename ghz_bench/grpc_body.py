#!/usr/bin/env python3
"""Writes an h2load body file for one Authorize request of a ghz data file:
the gRPC frame (flag byte, 4-byte big-endian length) around the protobuf.
    python3 ghz_bench/grpc_body.py DATA.json INDEX OUT.bin
"""
import json
import struct
import sys


def field(number, payload):
    """A length-delimited protobuf field."""
    key = (number << 3) | 2
    out = bytearray()
    for value in (key, len(payload)):
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def authorize(entry):
    resource = field(1, entry["resource"]["type"].encode()) + field(2, entry["resource"]["id"].encode())
    return field(1, entry["user_id"].encode()) + field(2, entry["action"].encode()) + field(3, resource)


def main():
    data, index, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    message = authorize(json.load(open(data))[index])
    with open(out, "wb") as f:
        f.write(b"\x00" + struct.pack(">I", len(message)) + message)


if __name__ == "__main__":
    main()
