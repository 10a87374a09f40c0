#!/usr/bin/env python3
"""geo: a pipe process stage that adds a `region` field from a `country` code.

    [[pipelines.default.stages]]
    command = ["python3", "stages/examples/geo.py"]
    config = { field = "country", target = "region", unknown = "reject" }

Config (all optional): `field` (default "country") holds an ISO 3166 alpha-2 code, in
any case; `target` (default "region") is the field written; `unknown` is "null" (the
default: the region is null) or "reject" (the row goes to the stage's on_error policy).

It speaks pipe's process-stage protocol, version 1 (README, "Process stages"): a
handshake line each way, then for each batch a header line and one JSON object per
record in, the same back; `{"end": true}` at the end. Messages go to stderr, which pipe
shows with the prefix `[geo]`; stdout carries the protocol only.
"""

import json
import sys

REGIONS = {
    "Europe": "AT BE BG CH CY CZ DE DK EE ES FI FR GB GR HR HU IE IS IT LT LU LV MT NL NO PL PT RO SE SI SK UA",
    "North America": "CA MX US",
    "South America": "AR BO BR CL CO EC PE PY UY VE",
    "Asia": "AE CN HK ID IL IN JP KR MY PH SA SG TH TR TW VN",
    "Africa": "EG ET GH KE MA NG TZ ZA",
    "Oceania": "AU NZ",
}
REGION_OF = {code: region for region, codes in REGIONS.items() for code in codes.split()}


def send(message):
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")


def main():
    hello = json.loads(sys.stdin.readline())
    config = hello.get("config", {})
    unknown_keys = set(config) - {"field", "target", "unknown"}
    if unknown_keys or config.get("unknown", "null") not in ("null", "reject"):
        send({"error": f"geo: unknown config key(s) {sorted(unknown_keys)} or bad `unknown` "
                       "(expected field, target, unknown = \"null\" | \"reject\")"})
        return
    field = config.get("field", "country")
    target = config.get("target", "region")
    reject_unknown = config.get("unknown") == "reject"
    send({"pipe": 1, "name": "geo", "version": "1.0.0",
          "description": "adds a region from an ISO country code"})
    sys.stdout.flush()
    print(f"ready: {field} -> {target}", file=sys.stderr)

    for line in sys.stdin:
        message = json.loads(line)
        if message.get("end"):
            send({"end": True, "rows": 0})
            break
        rows = [json.loads(sys.stdin.readline()) for _ in range(message["rows"])]
        out, rejects = [], []
        for i, row in enumerate(rows):
            code = str(row.get(field) or "").strip().upper()
            region = REGION_OF.get(code)
            if region is None and reject_unknown:
                rejects.append({"row": i, "reason": f"unknown country code {code!r}"})
                continue
            row[target] = region
            out.append(row)
        send({"batch": message["batch"], "rows": len(out), "rejects": rejects})
        for row in out:
            send(row)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
