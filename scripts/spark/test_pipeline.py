#!/usr/bin/env python3
"""The pipeline test (run by scripts/test.sh; see the README, "From Spark"):
seed 004's pipeline with metrics_ingest as its sink, killed and restarted.

 1. The generator writes --files CSV files, temp folder then atomic move into
    the hot folder, while the Spark job (local[2]) streams them into
    metrics_ingest.ingest_json.
 2. After micro-batch --kill-after is committed in PostgreSQL, and before Spark
    commits it in its checkpoint, the job writes a marker file and waits; this
    test then SIGKILLs the driver (its whole process group: the Python driver
    and the JVM it started).
 3. The job restarts from its checkpoint (availableNow: every file present, then
    stop). Spark re-runs the killed batch: every event of it must come back
    `duplicate`, its bad rows `rejected` again, with no second dead letter.
 4. The database must hold exactly the good events (4 metrics each) and every
    bad row once in metrics_ingest.rejected, naming the expected field.
Prints the throughput seen, beside seed 004's ~100 events/s.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(ok, message):
    if not ok:
        fail(message)
    print(f"    ok    {message}", flush=True)


def read_report(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for(predicate, timeout, what, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            fail(f"the Spark job exited (status {proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    fail(f"timed out after {timeout}s waiting for {what}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", required=True, help="the job's connection (a role granted metrics_ingest_writer)")
    p.add_argument("--check-dsn", help="connection for the checks, which read the tables (default: --dsn)")
    p.add_argument("--workdir", required=True, help="scratch folder (emptied first)")
    p.add_argument("--files", type=int, default=60)
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--kill-after", type=int, default=2, help="the micro-batch to crash after")
    p.add_argument("--timeout", type=int, default=240, help="seconds allowed for each run of the job")
    args = p.parse_args()
    check(args.files >= 50, f"at least 50 files ({args.files})")

    shutil.rmtree(args.workdir, ignore_errors=True)
    hot, temp = os.path.join(args.workdir, "input"), os.path.join(args.workdir, "temp")
    checkpoint = os.path.join(args.workdir, "checkpoints")
    report = os.path.join(args.workdir, "report.jsonl")
    marker = os.path.join(args.workdir, "paused")
    manifest_path = os.path.join(args.workdir, "manifest.json")
    os.makedirs(hot)
    os.makedirs(temp)
    logs = open(os.path.join(args.workdir, "spark.log"), "a", encoding="utf-8")
    job = [sys.executable, os.path.join(HERE, "ingest_stream.py"), "--hot", hot,
           "--checkpoint", checkpoint, "--dsn", args.dsn, "--report", report,
           "--files-per-batch", "4", "--trigger-seconds", "0.5"]

    check_dsn = args.check_dsn or args.dsn
    with psycopg.connect(check_dsn) as db:
        before = db.execute("SELECT (SELECT count(*) FROM metrics_ingest.metrics), "
                            "(SELECT count(*) FROM metrics_ingest.rejected)").fetchone()
    check(before == (0, 0), "the database starts empty")

    # 1. Producer and job together; the job pauses after batch --kill-after.
    print(f"==> run 1: generator ({args.files} files) and Spark job; crash after batch {args.kill_after}",
          flush=True)
    env = dict(os.environ, METRICS_INGEST_SPARK_PAUSE_AFTER_BATCH=str(args.kill_after),
               METRICS_INGEST_SPARK_PAUSE_MARKER=marker)
    started = time.time()
    spark = subprocess.Popen(job, env=env, stdout=logs, stderr=subprocess.STDOUT,
                             start_new_session=True)
    generator = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "generate.py"), "--hot", hot, "--temp", temp,
         "--files", str(args.files), "--rows", str(args.rows), "--interval", "0.1",
         "--manifest", manifest_path])
    try:
        wait_for(lambda: os.path.exists(marker), args.timeout, "batch to be stored", spark)
    finally:
        # 2. The crash: SIGKILL to the driver's process group (Python and its JVM).
        if spark.poll() is None:
            os.killpg(spark.pid, signal.SIGKILL)
        spark.wait()
    print(f"    killed the Spark driver (pid {spark.pid}, signal 9) "
          f"{time.time() - started:.1f}s after start", flush=True)
    check(generator.wait(timeout=args.timeout) == 0, "the generator finished")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    run1 = read_report(report)
    killed = [r for r in run1 if r["batch_id"] == args.kill_after]
    check(len(killed) == 1 and killed[0]["inserted"] > 0,
          f"batch {args.kill_after} was stored before the crash: {killed}")
    commit = os.path.join(checkpoint, "commits", str(args.kill_after))
    check(not os.path.exists(commit), f"Spark had not committed batch {args.kill_after} ({commit} absent)")

    # 3. Restart from the checkpoint, process everything present, stop.
    print("==> run 2: restart from the checkpoint (availableNow)", flush=True)
    spark = subprocess.Popen(job + ["--available-now"], stdout=logs, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        status = spark.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(spark.pid, signal.SIGKILL)
        fail(f"the restarted job did not finish within {args.timeout}s")
    check(status == 0, f"the restarted job ended normally (status {status})")
    run2 = read_report(report)[len(run1):]
    replayed = [r for r in run2 if r["batch_id"] == args.kill_after]
    first = killed[0]
    check(len(replayed) == 1, f"Spark re-ran batch {args.kill_after} after the restart")
    r = replayed[0]
    check(r["events"] == first["events"] and r["inserted"] == 0
          and r["duplicate"] == first["inserted"] and r["rejected"] == first["rejected"],
          f"the replayed batch {args.kill_after}: {r['duplicate']} duplicate, {r['rejected']} rejected, "
          f"0 inserted (first time: {first['inserted']} inserted, {first['rejected']} rejected)")

    # 4. The database against the manifest.
    good, bad = manifest["good"], manifest["bad"]
    with psycopg.connect(check_dsn) as db:
        stored = db.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM metrics_ingest.metrics").fetchone()
        check(stored == (4 * len(good), len(good)),
              f"exactly the {len(good)} good events stored, 4 metrics each (found {stored[1]} events, {stored[0]} rows)")
        missing = db.execute(
            "SELECT count(*) FROM unnest(%s::text[]) AS g(event_id) WHERE NOT EXISTS "
            "(SELECT 1 FROM metrics_ingest.metrics m WHERE m.event_id = g.event_id)", [good]).fetchone()[0]
        check(missing == 0, "every good line's event_id is stored")
        dead = dict(db.execute(
            "SELECT event_id, count(*) FROM metrics_ingest.rejected GROUP BY event_id").fetchall())
        check(set(dead) == {b["event_id"] for b in bad} and all(n == 1 for n in dead.values()),
              f"every one of the {len(bad)} bad rows is in rejected exactly once ({sum(dead.values())} rows)")
        fields = dict(db.execute("SELECT event_id, field FROM metrics_ingest.rejected").fetchall())
        wrong = [b for b in bad if b["field"] is not None and fields.get(b["event_id"]) != b["field"]]
        check(not wrong, f"each rejection names the spoiled field ({len(bad)} checked; wrong: {wrong[:3]})")

    # Throughput: events over the restarted run's micro-batches (JVM start excluded).
    events = sum(x["events"] for x in run2)
    seconds = max(x["finished"] for x in run2) - min(x["started"] for x in run2)
    total1 = sum(x["events"] for x in run1)
    print(f"==> {len(run1)} + {len(run2)} micro-batches, {total1} + {events} events "
          f"({len(good) + len(bad)} distinct lines)", flush=True)
    print(f"    throughput: {events / max(seconds, 1e-9):,.0f} events/s over the restarted run "
          f"({events} events in {seconds:.1f}s, local[2]); seed 004 reports ~100 events/s", flush=True)
    sink = sum(x["finished"] - x["started"] for x in run2)
    print(f"    inside foreachBatch (collect, build the payload, ingest_json, commit): "
          f"{events / max(sink, 1e-9):,.0f} events/s ({sink:.1f}s of the {seconds:.1f}s)", flush=True)
    print("spark pipeline test: PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
