#!/usr/bin/env python3
"""Seed 004's consumer, with metrics_ingest as its sink: Spark Structured
Streaming reads CSV files of wide-form call metrics from a hot folder and sends
each micro-batch to metrics_ingest.ingest_json in one transaction.

    python3 ingest_stream.py --hot data/input --checkpoint data/checkpoints \\
        --dsn "host=127.0.0.1 dbname=metrics user=spark_writer"

Exactly-once effects from at-least-once delivery. Spark re-runs a micro-batch
that was stored but not yet committed in its checkpoint (the driver died in
between). Every event carries an event_id derived from where it was read, its
source file's name and its line number ("calls-00007.csv:42"), so the re-run
stores nothing twice: metrics_ingest answers `duplicate` for every event of it
and keeps no second dead letter for its bad rows.

Line numbers are the reader's, not the producer's: the text source reads each
file whole (wholetext) and posexplode numbers its lines, so a line's id does not
depend on anything written in it. File names must therefore never repeat (the
generator numbers them). Line 1 of every file is its header.

The schema is strict: seven columns, in this order, typed as below. A row that
does not fit is not dropped and does not fail the stream: it is sent as read,
and metrics_ingest keeps it in metrics_ingest.rejected with the field and the
reason (a short line is sent with its raw text in `csv_line`).
"""

import argparse
import csv
import json
import os
import re
import signal
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (BooleanType, DoubleType, LongType, StringType,
                               StructField, StructType)

# The CSV's schema: names, order and types. Values are typed by it when they
# parse; otherwise they are sent as the text read, for metrics_ingest to judge.
SCHEMA = StructType([
    StructField("user_id", StringType()),
    StructField("session_id", StringType()),
    StructField("timestamp", LongType()),        # epoch seconds
    StructField("talked_time", DoubleType()),     # seconds
    StructField("microphone_used", BooleanType()),
    StructField("speaker_used", BooleanType()),
    StructField("voice_sentiment", StringType()),  # a label or a score
])
COLUMNS = [f.name for f in SCHEMA.fields]

INTEGER = re.compile(r"-?(0|[1-9][0-9]*)\Z")
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")


class RawNumber(str):
    """A number's exact text, written into the JSON unquoted."""


def typed(field, text):
    """One CSV cell by the schema: None for an empty cell, the typed value when
    it parses, else the text as read."""
    if text == "":
        return None
    kind = field.dataType
    if isinstance(kind, LongType) and INTEGER.match(text):
        return RawNumber(text)
    if isinstance(kind, DoubleType) and NUMBER.match(text):
        return RawNumber(text)
    if isinstance(kind, BooleanType) and text in ("true", "false"):
        return text == "true"
    return text


def element(event_id, line):
    """The JSON text of one event. Keys in a fixed order, so the same line always
    gives the same text (the dead-letter key includes the element's text)."""
    cells = next(csv.reader([line]), [])
    parts = [("event_id", event_id)]
    if len(cells) == len(COLUMNS):
        parts += [(f.name, typed(f, c)) for f, c in zip(SCHEMA.fields, cells)]
    else:
        parts += [("user_id", cells[0] if cells and cells[0] else None),
                  ("csv_error", f"expected {len(COLUMNS)} columns, found {len(cells)}"),
                  ("csv_line", line)]
    out = []
    for key, value in parts:
        if value is None:
            continue
        text = value if isinstance(value, RawNumber) else json.dumps(value, ensure_ascii=False)
        out.append(f"{json.dumps(key)}:{text}")
    return "{" + ",".join(out) + "}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hot", required=True, help="the hot folder of complete CSV files")
    p.add_argument("--checkpoint", required=True, help="Spark's checkpoint folder")
    p.add_argument("--dsn", required=True, help="libpq connection string (a role granted metrics_ingest_writer)")
    p.add_argument("--files-per-batch", type=int, default=4, help="maxFilesPerTrigger")
    p.add_argument("--trigger-seconds", type=float, default=1.0)
    p.add_argument("--available-now", action="store_true",
                   help="process every file present, in micro-batches, then stop (backfills, tests)")
    p.add_argument("--report", help="append one JSON line per stored micro-batch here")
    p.add_argument("--master", default="local[2]")
    args = p.parse_args()

    import psycopg  # imported here so --help works without it

    # Test hook (scripts/spark/test_pipeline.py): after batch N is committed in
    # PostgreSQL, and before Spark commits it in its checkpoint, write a marker
    # file and wait to be killed.
    pause_after = os.environ.get("METRICS_INGEST_SPARK_PAUSE_AFTER_BATCH")
    pause_marker = os.environ.get("METRICS_INGEST_SPARK_PAUSE_MARKER")

    spark = (SparkSession.builder.master(args.master)
             .appName("metrics_ingest hot folder")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")

    lines = (spark.readStream.format("text")
             .option("wholetext", "true")
             .option("maxFilesPerTrigger", args.files_per_batch)
             .load(args.hot)
             .select(F.element_at(F.split(F.input_file_name(), "/"), -1).alias("file"),
                     F.posexplode(F.split(F.col("value"), "\n")).alias("pos", "line"))
             .select("file", (F.col("pos") + 1).alias("line_no"),
                     F.regexp_replace("line", "\r$", "").alias("line"))
             .where((F.col("line_no") > 1) & (F.col("line") != "")))

    conn = psycopg.connect(args.dsn, autocommit=False)

    def store(batch, batch_id):
        started = time.time()
        rows = sorted(batch.collect(), key=lambda r: (r.file, r.line_no))
        payload = "[" + ",".join(element(f"{r.file}:{r.line_no}", r.line) for r in rows) + "]"
        counts = {"inserted": 0, "duplicate": 0, "rejected": 0}
        if rows:
            with conn.transaction():
                for (status, n) in conn.execute(
                        "SELECT status, count(*) FROM metrics_ingest.ingest_json(%s::text) GROUP BY status",
                        [payload]):
                    counts[status] = n
        finished = time.time()
        report = {"batch_id": batch_id, "events": len(rows), **counts,
                  "files": len({r.file for r in rows}), "started": started, "finished": finished}
        print(f"batch {batch_id}: {json.dumps(report)}", flush=True)
        if args.report:
            with open(args.report, "a", encoding="utf-8") as out:
                out.write(json.dumps(report) + "\n")
        if pause_after is not None and batch_id == int(pause_after):
            with open(pause_marker, "w", encoding="utf-8") as out:
                out.write(f"{os.getpid()}\n")
            print(f"batch {batch_id} stored; pausing before Spark commits it", flush=True)
            time.sleep(3600)

    writer = (lines.writeStream.foreachBatch(store)
              .option("checkpointLocation", args.checkpoint))
    if args.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{args.trigger_seconds} seconds")
    query = writer.start()
    signal.signal(signal.SIGTERM, lambda *_: query.stop())
    query.awaitTermination()
    conn.close()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
