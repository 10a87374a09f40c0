#!/usr/bin/env python3
"""The process-stage twin of `compute` with `country = upper(country)`, for
benches/process.rs: the same transform on both sides of the comparison."""
import json
import sys


def send(msg):
    sys.stdout.write(json.dumps(msg, separators=(",", ":")) + "\n")


json.loads(sys.stdin.readline())  # the handshake: {"pipe": 1, "stage": ..., "config": ...}
send({"pipe": 1, "name": "upper", "version": "1.0.0"})
sys.stdout.flush()
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("end"):
        break
    rows = [json.loads(sys.stdin.readline()) for _ in range(msg["rows"])]
    for row in rows:
        if isinstance(row.get("country"), str):
            row["country"] = row["country"].upper()
    send({"batch": msg["batch"], "rows": len(rows)})
    for row in rows:
        send(row)
    sys.stdout.flush()
