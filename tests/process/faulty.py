#!/usr/bin/env python3
"""Test process stage `faulty`: injects the failures the host must survive, on cue.

The process-stage twin of tests/plugins/faulty. Each fault is keyed on the text of one
field (config `field`, default `id`); the value "*" matches every row. Rows no fault
matches pass through unchanged. Config (all optional; unknown keys are refused in the
handshake, as a real stage should):

| key              | effect at the matching row                                        |
|------------------|-------------------------------------------------------------------|
| reject_on        | reject the row with reason "rejected <v>"                         |
| error_on         | answer {"batch": n, "error": "refused row <v>"} for the batch     |
| crash_on         | raise an exception: a traceback on stderr, exit status 1          |
| exit_on          | exit quietly with status 0, mid-batch                             |
| kill_on          | kill itself with SIGKILL                                          |
| garbage_on       | print a debugging line on stdout instead of the reply             |
| hang_on          | sleep forever                                                     |
| fail_start       | exit with status 3 before the handshake                           |
| bad_hello        | answer the handshake with something else                          |
| pid_dir          | write an empty file named after its pid into this directory       |
| add_pid          | add a field `pid` with the child's pid to every row               |
| log              | write this line to stderr after the handshake                     |
| emit_in_finish   | at the end, emit this many rows {"id": "finish-<i>"}              |
"""

import json
import os
import signal
import sys
import time

KEYS = {"field", "reject_on", "error_on", "crash_on", "exit_on", "kill_on", "garbage_on",
        "hang_on", "fail_start", "bad_hello", "pid_dir", "add_pid", "log", "emit_in_finish"}


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")


def main():
    config = json.loads(sys.stdin.readline())["config"]
    if config.get("pid_dir"):
        open(os.path.join(config["pid_dir"], str(os.getpid())), "w").close()
    if config.get("fail_start"):
        print("faulty: failing at start as asked", file=sys.stderr)
        sys.exit(3)
    if set(config) - KEYS:
        send({"error": f"unknown config keys: {sorted(set(config) - KEYS)}"})
        return
    if config.get("bad_hello"):
        send({"hello": "world"})
    else:
        send({"pipe": 1, "name": "faulty", "version": "1.0.0"})
    sys.stdout.flush()
    if config.get("log"):
        print(config["log"], file=sys.stderr, flush=True)
    field = config.get("field", "id")

    def hit(key, row):
        want = config.get(key)
        return want is not None and (want == "*" or str(row.get(field)) == want)

    for line in sys.stdin:
        message = json.loads(line)
        if message.get("end"):
            n = int(config.get("emit_in_finish", 0))
            send({"end": True, "rows": n})
            for i in range(n):
                send({field: f"finish-{i}"})
            sys.stdout.flush()
            return
        rows = [json.loads(sys.stdin.readline()) for _ in range(message["rows"])]
        out, rejects, error = [], [], None
        for i, row in enumerate(rows):
            if hit("crash_on", row):
                raise RuntimeError(f"boom on {row.get(field)}")
            if hit("exit_on", row):
                sys.exit(0)
            if hit("kill_on", row):
                os.kill(os.getpid(), signal.SIGKILL)
            if hit("garbage_on", row):
                print(f"debug: looking at {row}", flush=True)
                time.sleep(60)
            if hit("hang_on", row):
                time.sleep(3600)
            if hit("error_on", row):
                error = f"refused row {row.get(field)}"
            if hit("reject_on", row):
                rejects.append({"row": i, "reason": f"rejected {row.get(field)}"})
                continue
            if config.get("add_pid"):
                row["pid"] = os.getpid()
            out.append(row)
        if error:
            send({"batch": message["batch"], "error": error})
        else:
            send({"batch": message["batch"], "rows": len(out), "rejects": rejects})
            for row in out:
                send(row)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
