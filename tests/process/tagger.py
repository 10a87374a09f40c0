#!/usr/bin/env python3
"""Test process stage `tagger`: marks every row with the version that processed it.

The hot-swap tests copy this file, rewrite TAG and VERSION while records stream through
it, and check that the output switches from one tag to the other exactly once, in input
order, with no row lost or duplicated. Config: `label` (optional) adds a column `label`
with its value, so a config change shows in the output.
"""

import json
import sys

TAG = "v1"
VERSION = "1.0.0"


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")


config = json.loads(sys.stdin.readline())["config"]
send({"pipe": 1, "name": "tagger", "version": VERSION})
sys.stdout.flush()
for line in sys.stdin:
    message = json.loads(line)
    if message.get("end"):
        break
    rows = [json.loads(sys.stdin.readline()) for _ in range(message["rows"])]
    send({"batch": message["batch"], "rows": len(rows)})
    for row in rows:
        row["tag"] = TAG
        if "label" in config:
            row["label"] = config["label"]
        send(row)
    sys.stdout.flush()
