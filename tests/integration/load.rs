//! Concurrent load: many clients ingesting at once, retries racing the originals.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::thread;

use metrics_ingest_tests::server::{error_text, Client, TestDb};
use serde_json::{json, Value};

use crate::support::{count, ingest_with, Outcome, Via};

const WRITERS: usize = 8;
const RESENDERS: usize = 4;
const ROUNDS: usize = 4;
const BATCH: usize = 1000;
/// Every WIDE_EVERY-th element is a wide-form element (four metrics in one element).
const WIDE_EVERY: usize = 10;
const BASE_EPOCH: i64 = 1_710_000_000; // 2024-03-09T16:00:00Z

/// A stored metric as the test expects to read it back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    user_id: String,
    event_id: String,
    metric_type: String,
    epoch: i64,
    /// metric_value's bits: exact comparison
    value: u64,
    label: Option<String>,
}

fn row(user: &str, event: &str, metric: &str, epoch: i64, value: f64, label: Option<&str>) -> Row {
    Row {
        user_id: user.into(),
        event_id: event.into(),
        metric_type: metric.into(),
        epoch,
        value: value.to_bits(),
        label: label.map(str::to_string),
    }
}

/// Batch (writer, round): its payload and the rows it must store once.
fn batch(writer: usize, round: usize) -> Batch {
    let mut elements = Vec::with_capacity(BATCH);
    let mut rows = Vec::new();
    for i in 0..BATCH {
        let user = format!("load-u{writer}-{}", i % 37);
        let event = format!("w{writer}r{round}e{i}");
        let epoch = BASE_EPOCH + (writer * 100_000 + round * 2_000 + i) as i64;
        if i % WIDE_EVERY == 0 {
            let talked = i as f64 + 0.25;
            let mic = i % 2 == 0;
            let speaker = i % 3 == 0;
            let (sentiment, label): (Value, Option<&str>) = if i % 20 == 0 {
                (json!("positive"), Some("positive"))
            } else {
                (json!(-0.5), None)
            };
            let sentiment_value = if label.is_some() { 1.0 } else { -0.5 };
            elements.push(json!({
                "timestamp": epoch,
                "user_id": user,
                "session_id": format!("sess-{writer}-{round}"),
                "event_id": event,
                "talked_time": talked,
                "microphone_used": mic,
                "speaker_used": speaker,
                "voice_sentiment": sentiment,
            }));
            rows.push(row(&user, &event, "talked_time", epoch, talked, None));
            rows.push(row(
                &user,
                &event,
                "microphone_used",
                epoch,
                if mic { 1.0 } else { 0.0 },
                None,
            ));
            rows.push(row(
                &user,
                &event,
                "speaker_used",
                epoch,
                if speaker { 1.0 } else { 0.0 },
                None,
            ));
            rows.push(row(
                &user,
                &event,
                "voice_sentiment",
                epoch,
                sentiment_value,
                label,
            ));
        } else {
            let value = (writer * 10_000 + round * 1_000 + i) as f64 / 4.0;
            elements.push(json!({
                "timestamp": epoch,
                "user_id": user,
                "session_id": format!("sess-{writer}-{round}"),
                "metric_type": "talked_time",
                "metric_value": value,
                "event_id": event,
                "device_id": format!("dev-{}", i % 5),
            }));
            rows.push(row(&user, &event, "talked_time", epoch, value, None));
        }
    }
    (Value::Array(elements).to_string(), rows)
}

/// Rows read back from the table, in the test's terms, sorted.
fn stored_rows(client: &mut Client, filter: &str) -> Vec<Row> {
    let sql = format!(
        "SELECT user_id, coalesce(event_id, ''), metric_type, \
                extract(epoch FROM \"timestamp\")::bigint, metric_value, metric_label \
         FROM metrics_ingest.metrics WHERE {filter}"
    );
    let mut rows: Vec<Row> = client
        .query(&sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .iter()
        .map(|r| Row {
            user_id: r.get(0),
            event_id: r.get(1),
            metric_type: r.get(2),
            epoch: r.get(3),
            value: r.get::<_, f64>(4).to_bits(),
            label: r.get(5),
        })
        .collect();
    rows.sort();
    rows
}

/// A connection for a load client: a hang must become an error, not a stuck test.
fn load_client(db: &TestDb) -> Client {
    let mut client = db.connect();
    client
        .batch_execute("SET statement_timeout = '120s'")
        .expect("SET statement_timeout");
    client
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Send {
    /// The writer's first send of its batch.
    Original,
    /// A resend started at the same moment as the original.
    Racing,
    /// A resend of a batch whose original had committed before it started.
    Late,
}

type SendResult = ((usize, usize), Send, Result<Vec<Outcome>, String>);
/// A batch's payload and the rows it stores.
type Batch = (String, Vec<Row>);
/// Every send of one batch and what it got.
type Sends = Vec<(Send, Vec<Outcome>)>;

#[test]
fn concurrent_batches_and_racing_resends_store_each_event_once() {
    let db = TestDb::new("load_batches");
    let batches: Arc<Vec<Vec<Batch>>> = Arc::new(
        (0..WRITERS)
            .map(|w| (0..ROUNDS).map(|r| batch(w, r)).collect())
            .collect(),
    );
    let barrier = Arc::new(Barrier::new(WRITERS + RESENDERS));
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let (batches, barrier, mut client) = (batches.clone(), barrier.clone(), load_client(&db));
        handles.push(thread::spawn(move || {
            let mut results: Vec<SendResult> = Vec::new();
            for r in 0..ROUNDS {
                barrier.wait();
                let outcome = ingest_with(&mut client, &batches[w][r].0, Via::Text, "reject")
                    .map_err(|e| error_text(&e));
                results.push(((w, r), Send::Original, outcome));
            }
            results
        }));
    }
    for j in 0..RESENDERS {
        let (batches, barrier, mut client) = (batches.clone(), barrier.clone(), load_client(&db));
        handles.push(thread::spawn(move || {
            let mut results: Vec<SendResult> = Vec::new();
            for r in 0..ROUNDS {
                barrier.wait();
                // Same moment as writer 2j's send of the same batch.
                let racing = 2 * j;
                let outcome = ingest_with(&mut client, &batches[racing][r].0, Via::Text, "reject")
                    .map_err(|e| error_text(&e));
                results.push(((racing, r), Send::Racing, outcome));
                // Writer 2j+1 finished round r-1 before reaching this round's barrier.
                if r > 0 {
                    let late = 2 * j + 1;
                    let outcome =
                        ingest_with(&mut client, &batches[late][r - 1].0, Via::Jsonb, "reject")
                            .map_err(|e| error_text(&e));
                    results.push(((late, r - 1), Send::Late, outcome));
                }
            }
            results
        }));
    }
    let results: Vec<SendResult> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a load client panicked"))
        .collect();

    // No client saw an error (no deadlock, no serialization failure, nothing).
    let errors: Vec<String> = results
        .iter()
        .filter_map(|(key, send, r)| r.as_ref().err().map(|e| format!("{key:?} {send:?}: {e}")))
        .collect();
    assert!(errors.is_empty(), "clients saw errors: {errors:#?}");

    let mut by_batch: BTreeMap<(usize, usize), Sends> = BTreeMap::new();
    for (key, send, r) in results {
        by_batch.entry(key).or_default().push((send, r.unwrap()));
    }
    assert_eq!(by_batch.len(), WRITERS * ROUNDS);
    let mut stored_reported = 0i64;
    for ((w, r), sends) in &by_batch {
        let expected_rows_per_element = |i: usize| if i.is_multiple_of(WIDE_EVERY) { 4 } else { 1 };
        for (send, outcomes) in sends {
            assert_eq!(
                outcomes.len(),
                BATCH,
                "batch ({w},{r}) {send:?}: one outcome per element"
            );
            for (i, o) in outcomes.iter().enumerate() {
                assert_eq!(
                    o.ordinal as usize,
                    i + 1,
                    "batch ({w},{r}) {send:?}: ordinals"
                );
                assert!(
                    o.status == "inserted" || o.status == "duplicate",
                    "batch ({w},{r}) {send:?} element {}: {o:?}",
                    i + 1
                );
                let stored = if o.status == "inserted" {
                    expected_rows_per_element(i)
                } else {
                    0
                };
                assert_eq!(o.metrics_stored, stored, "batch ({w},{r}) {send:?}: {o:?}");
                assert_eq!(o.error, None, "batch ({w},{r}) {send:?}: {o:?}");
                stored_reported += o.metrics_stored as i64;
            }
            if *send == Send::Late {
                assert!(
                    outcomes.iter().all(|o| o.status == "duplicate"),
                    "batch ({w},{r}) re-sent after it committed: every element must be a duplicate"
                );
            }
        }
        // Across all sends of a batch, each element is inserted exactly once.
        for i in 0..BATCH {
            let inserted = sends
                .iter()
                .filter(|(_, outcomes)| outcomes[i].status == "inserted")
                .count();
            assert_eq!(
                inserted,
                1,
                "batch ({w},{r}) element {}: inserted by {inserted} sends: {:?}",
                i + 1,
                sends.iter().map(|(s, o)| (s, &o[i])).collect::<Vec<_>>()
            );
        }
        let kinds: Vec<Send> = sends.iter().map(|(s, _)| *s).collect();
        let expected_kinds = match (w % 2, *r) {
            (0, _) => 2,
            (_, r) if r + 1 < ROUNDS => 2,
            _ => 1,
        };
        assert_eq!(
            kinds.len(),
            expected_kinds,
            "batch ({w},{r}) sends: {kinds:?}"
        );
    }

    let raced: Vec<usize> = by_batch
        .values()
        .flat_map(|sends| sends.iter())
        .filter(|(send, _)| *send == Send::Racing)
        .map(|(_, outcomes)| outcomes.iter().filter(|o| o.status == "inserted").count())
        .collect();
    eprintln!(
        "load: racing resends inserted {} of {} elements (per batch: {raced:?})",
        raced.iter().sum::<usize>(),
        raced.len() * BATCH
    );

    // Exactly the distinct events are stored: same count, same rows, same checksum.
    let mut expected: Vec<Row> = batches
        .iter()
        .flatten()
        .flat_map(|(_, rows)| rows.iter().cloned())
        .collect();
    expected.sort();
    let mut client = db.connect();
    let total = count(&mut client, "SELECT count(*) FROM metrics_ingest.metrics");
    assert_eq!(total, expected.len() as i64, "rows stored");
    assert_eq!(
        stored_reported, total,
        "sum of metrics_stored over every send"
    );
    let distinct_events = count(
        &mut client,
        "SELECT count(DISTINCT event_id) FROM metrics_ingest.metrics",
    );
    assert_eq!(distinct_events, (WRITERS * ROUNDS * BATCH) as i64);
    let expected_sum: f64 = expected.iter().map(|r| f64::from_bits(r.value)).sum();
    let sum: f64 = client
        .query_one("SELECT sum(metric_value) FROM metrics_ingest.metrics", &[])
        .unwrap()
        .get(0);
    assert!(
        (sum - expected_sum).abs() < 1e-6,
        "checksum: sum(metric_value) = {sum}, expected {expected_sum}"
    );
    let stored = stored_rows(&mut client, "true");
    if stored != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|r| !stored.contains(r))
            .take(5)
            .collect();
        let extra: Vec<_> = stored
            .iter()
            .filter(|r| !expected.contains(r))
            .take(5)
            .collect();
        panic!(
            "stored rows differ from the distinct events sent ({} stored, {} expected); \
             first missing: {missing:#?}; first unexpected: {extra:#?}",
            stored.len(),
            expected.len()
        );
    }
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM metrics_ingest.rejected"),
        0,
        "nothing was rejected"
    );
}

const CALLERS: usize = 8;
const CALLS: usize = 500;

/// What call `i` of thread `t` sends: (user, event_id, epoch, value). Every fifth call
/// is an event all threads send (same key, same value); a few have no event_id.
fn call_args(t: usize, i: usize) -> (String, Option<String>, i64, f64) {
    let epoch = BASE_EPOCH + i as i64;
    if i.is_multiple_of(5) {
        (
            "shared-user".into(),
            Some(format!("shared-{i}")),
            epoch,
            i as f64,
        )
    } else if i % 7 == 3 {
        (format!("call-u{t}"), None, epoch, (t * 1000 + i) as f64)
    } else {
        (
            format!("call-u{t}"),
            Some(format!("t{t}-c{i}")),
            epoch,
            (t * 1000 + i) as f64,
        )
    }
}

#[test]
fn concurrent_insert_metric_calls_store_exact_counts() {
    let db = TestDb::new("load_calls");
    let barrier = Arc::new(Barrier::new(CALLERS));
    let handles: Vec<_> = (0..CALLERS)
        .map(|t| {
            let (barrier, mut client) = (barrier.clone(), load_client(&db));
            thread::spawn(move || {
                // Alternate the two overloads: the value as text and as a number.
                let as_text = client
                    .prepare(
                        "CALL metrics_ingest.insert_metric(to_timestamp($1::float8), $2, $3, \
                         'talked_time', $4::text, event_id => $5)",
                    )
                    .expect("prepare text CALL");
                let as_number = client
                    .prepare(
                        "CALL metrics_ingest.insert_metric(to_timestamp($1::float8), $2, $3, \
                         'talked_time', $4::float8, device_id => 'phone', event_id => $5)",
                    )
                    .expect("prepare number CALL");
                barrier.wait();
                let mut errors = Vec::new();
                for i in 0..CALLS {
                    let (user, event, epoch, value) = call_args(t, i);
                    // A re-sent event carries the same values from every thread (one
                    // with other values would be a conflict: 23505 from insert_metric).
                    let session = if user == "shared-user" {
                        "shared-s".to_string()
                    } else {
                        format!("call-s{t}")
                    };
                    let epoch = epoch as f64;
                    let result = if i % 2 == 0 {
                        let text = format!("{value}");
                        client.execute(&as_text, &[&epoch, &user, &session, &text, &event])
                    } else {
                        client.execute(&as_number, &[&epoch, &user, &session, &value, &event])
                    };
                    if let Err(e) = result {
                        errors.push(format!("thread {t} call {i}: {}", error_text(&e)));
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a caller panicked"))
        .collect();
    assert!(errors.is_empty(), "CALLs failed: {errors:#?}");

    let mut expected: Vec<Row> = Vec::new();
    for i in 0..CALLS {
        for t in 0..CALLERS {
            let (user, event, epoch, value) = call_args(t, i);
            if event.as_deref().is_some_and(|e| e.starts_with("shared-")) && t > 0 {
                continue; // stored once, whichever thread won
            }
            expected.push(Row {
                user_id: user,
                event_id: event.unwrap_or_default(),
                metric_type: "talked_time".into(),
                epoch,
                value: value.to_bits(),
                label: None,
            });
        }
    }
    expected.sort();
    let shared = CALLS / 5;
    assert_eq!(expected.len(), shared + CALLERS * (CALLS - shared));

    let mut client = db.connect();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM metrics_ingest.metrics"),
        expected.len() as i64
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'shared-user'"
        ),
        shared as i64,
        "each shared event is stored once"
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM metrics_ingest.metrics WHERE event_id IS NULL"
        ),
        (CALLERS * (0..CALLS).filter(|i| i % 5 != 0 && i % 7 == 3).count()) as i64,
        "calls without an event_id are each stored"
    );
    let stored = stored_rows(&mut client, "true");
    assert_eq!(stored.len(), expected.len());
    assert!(stored == expected, "stored rows differ from the calls made");
}
