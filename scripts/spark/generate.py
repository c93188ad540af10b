#!/usr/bin/env python3
"""Seed 004's producer, for call metrics: writes CSV files of wide-form call
metrics (seed 001/003's columns) into a temp folder and moves each one into the
hot folder only once it is complete, so the Spark job never sees half a file.

    python3 generate.py --hot data/input --temp data/temp --files 60 --rows 100

A few rows are bad on purpose (--bad-every N: one row in N), of the kinds a real
feed has: a negative talked_time, an unknown sentiment label, an unreadable
timestamp, a boolean that is not one, an empty user_id, a truncated line. The
--manifest file records, per file and line, whether the row is good and, if
not, which field the extension should name; the pipeline test checks the
database against it.
"""

import argparse
import csv
import io
import json
import os
import random
import time

HEADER = ["user_id", "session_id", "timestamp", "talked_time",
          "microphone_used", "speaker_used", "voice_sentiment"]

# kind -> (field the rejection names, how the row is spoiled)
BAD_KINDS = {
    "negative_talked_time": ("talked_time", lambda r: r.__setitem__(3, "-5")),
    "unknown_sentiment": ("voice_sentiment", lambda r: r.__setitem__(6, "ecstatic")),
    "unreadable_timestamp": ("timestamp", lambda r: r.__setitem__(2, "yesterday")),
    "not_a_boolean": ("microphone_used", lambda r: r.__setitem__(4, "maybe")),
    "empty_user_id": ("user_id", lambda r: r.__setitem__(0, "")),
    "truncated_line": (None, lambda r: r.__delitem__(slice(4, None))),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hot", required=True, help="the folder the Spark job reads")
    p.add_argument("--temp", required=True, help="where files are written before the move")
    p.add_argument("--files", type=int, default=60)
    p.add_argument("--rows", type=int, default=100, help="rows per file")
    p.add_argument("--bad-every", type=int, default=25, help="one bad row in N (0: none)")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between files")
    p.add_argument("--prefix", default="calls", help="file name prefix (names must never repeat)")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--manifest", help="write the expected outcome of every line here (JSON)")
    args = p.parse_args()

    os.makedirs(args.hot, exist_ok=True)
    os.makedirs(args.temp, exist_ok=True)
    rng = random.Random(args.seed)
    kinds = sorted(BAD_KINDS)
    manifest = {"good": [], "bad": []}
    base = 1722470400  # 2024-08-01T00:00:00Z
    n = 0
    for f in range(args.files):
        name = f"{args.prefix}-{f:05d}.csv"
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(HEADER)
        for line in range(2, args.rows + 2):  # line 1 is the header
            n += 1
            row = [f"spark-u{rng.randrange(200)}", f"spark-s{rng.randrange(1000)}",
                   str(base + n), str(rng.randrange(0, 3600)),
                   rng.choice(["true", "false"]), rng.choice(["true", "false"]),
                   rng.choice(["positive", "neutral", "negative"])]
            event_id = f"{name}:{line}"
            if args.bad_every and n % args.bad_every == 0:
                kind = kinds[(n // args.bad_every) % len(kinds)]
                field, spoil = BAD_KINDS[kind]
                spoil(row)
                manifest["bad"].append({"event_id": event_id, "kind": kind, "field": field})
            else:
                manifest["good"].append(event_id)
            writer.writerow(row)
        tmp = os.path.join(args.temp, name)
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(buf.getvalue())
            out.flush()
            os.fsync(out.fileno())
        # The hand-off: a rename within one file system is atomic.
        os.replace(tmp, os.path.join(args.hot, name))
        if args.interval:
            time.sleep(args.interval)
    if args.manifest:
        with open(args.manifest, "w", encoding="utf-8") as out:
            json.dump(manifest, out)
    print(f"generated {args.files} files, {n} rows ({len(manifest['bad'])} bad) in {args.hot}")


if __name__ == "__main__":
    main()
