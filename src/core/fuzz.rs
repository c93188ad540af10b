//! A bounded fuzz test of the pure core, run with the other tests: many
//! generated payloads (structured, mutated and token soup) must each end in
//! verdicts or a payload error, never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::value::RawValue;

use super::element::{validate_json_element, validate_read, CONTEXT_FIELDS};
use super::error::PayloadError;
use super::payload::for_each_element;
use super::registry::Registry;

/// xorshift64*: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Keys that mean something (every context field, every metric) and some that do not.
fn keys() -> Vec<&'static str> {
    let mut keys = CONTEXT_FIELDS.to_vec();
    keys.extend([
        "talked_time",
        "microphone_used",
        "speaker_used",
        "voice_sentiment",
        "name",
        "x",
        "",
    ]);
    keys
}
const SCALARS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1",
    "-1",
    "1.5",
    "1e400",
    "-1e400",
    "1e-400",
    "1622558400",
    "1622558400000",
    "123456789012345678901234567890",
    "0.0000001",
    "\"\"",
    "\"1\"",
    "\"NaN\"",
    "\"inf\"",
    "\"-1e400\"",
    "\"positive\"",
    "\"Negative\"",
    "\"2024-08-12T12:00:00Z\"",
    "\"99999-01-01T00:00:00Z\"",
    "\"2024-02-30T00:00:00Z\"",
    "\"2024-08-12 12:00:00+25:00\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\ud83d\\ude00\"",
    "\"Zoë 🎧\"",
    "\"'; DROP TABLE x; --\"",
    "\"talked_time\"",
    "\"voice_sentiment\"",
    "\"microphone_used\"",
];
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u",
    "d800",
    "0",
    "1",
    "e",
    "-",
    ".",
    "true",
    "null",
    "\"user_id\"",
    "\"timestamp\"",
    " ",
    "\n",
    "é",
    "🎧",
    "\u{0}",
];

fn value(rng: &mut Rng, depth: usize) -> String {
    match rng.below(if depth > 4 { 2 } else { 5 }) {
        0 | 1 => rng.pick(SCALARS).to_string(),
        2 => format!(
            "[{}]",
            (0..rng.below(3))
                .map(|_| value(rng, depth + 1))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => element(rng, depth + 1),
    }
}

fn element(rng: &mut Rng, depth: usize) -> String {
    let keys = keys();
    let fields: Vec<String> = (0..rng.below(12))
        .map(|_| format!("\"{}\":{}", rng.pick(&keys), value(rng, depth)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => chars.truncate(at),
            _ => chars
                .splice(at..at, rng.pick(TOKENS).chars())
                .for_each(drop),
        }
    }
    chars.into_iter().collect()
}

fn payload(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => element(rng, 0),
        1 => format!(
            "[{}]",
            (0..rng.below(5))
                .map(|_| element(rng, 0))
                .collect::<Vec<_>>()
                .join(",")
        ),
        2 => {
            let base = format!(
                "[{}]",
                (0..1 + rng.below(3))
                    .map(|_| element(rng, 0))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            mutate(rng, &base)
        }
        _ => (0..rng.below(40)).map(|_| *rng.pick(TOKENS)).collect(),
    }
}

#[test]
fn no_payload_panics_the_core() {
    let registry = Registry::builtin();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for case in 0..10_000 {
        let input = payload(&mut rng);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let _ = for_each_element(&input, |_, raw, read| {
                let _ = validate_read(raw, read, &registry);
            });
        }));
        assert!(outcome.is_ok(), "case {case} panicked on input {input:?}");
    }
}

/// The single pass over a payload (each element read once, in place) against
/// the two passes it replaced: the payload split into raw elements by
/// serde_json, then each element parsed again from its text. Same elements,
/// same raw texts, same verdicts and messages, same payload errors.
#[test]
fn the_single_pass_reads_every_payload_as_two_passes_do() {
    let registry = Registry::builtin();
    let mut rng = Rng(0x5EED_1234_ABCD_0002);
    let mut arrays = 0;
    let mut worded_apart = 0;
    for case in 0..10_000 {
        let input = payload(&mut rng);
        let mut single = Vec::new();
        let single_result = for_each_element(&input, |ordinal, raw, read| {
            single.push((
                ordinal,
                raw.to_string(),
                validate_read(raw, read, &registry),
            ));
        });
        if !input.trim_start().starts_with('[') {
            continue;
        }
        let reference = serde_json::from_str::<Vec<&RawValue>>(&input);
        match (&single_result, &reference) {
            (Ok(count), Ok(elements)) => {
                arrays += 1;
                assert_eq!(*count, elements.len(), "case {case}: {input:?}");
                for (i, ((ordinal, raw, verdict), element)) in
                    single.iter().zip(elements).enumerate()
                {
                    assert_eq!(*ordinal, i + 1);
                    assert_eq!(
                        raw,
                        element.get(),
                        "case {case} element {ordinal}: {input:?}"
                    );
                    assert_eq!(
                        verdict,
                        &validate_json_element(element.get(), &registry),
                        "case {case} element {ordinal}: {input:?}"
                    );
                }
            }
            (Err(single), Err(two)) => {
                let single = match single {
                    PayloadError::NotJson { message } | PayloadError::TooDeep { message } => {
                        message.clone()
                    }
                    other => format!("{other:?}"),
                };
                let two = two.to_string();
                // The same place; the wording may differ where serde_json read
                // the element as an object rather than skipped it as a value
                // ("EOF while parsing a value" for "... an object").
                let place = |m: &str| m.rfind(" at line ").map(|i| m[i..].to_string());
                assert_eq!(
                    place(&single),
                    place(&two),
                    "case {case}: single pass {single}, two passes {two}, on {input:?}"
                );
                if single != two {
                    worded_apart += 1;
                }
            }
            _ => panic!(
                "case {case}: single pass {:?}, two passes {:?}, on {input:?}",
                single_result.as_ref().map(|_| ()),
                reference.as_ref().map(|_| ())
            ),
        }
    }
    assert!(
        arrays > 1_000,
        "only {arrays} generated payloads were readable arrays"
    );
    // Shown with --nocapture: how often only the wording differed.
    eprintln!("{arrays} readable arrays read alike; {worded_apart} payload errors worded apart");
}
