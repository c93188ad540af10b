//! Streaming over a payload: a JSON array is walked element by element, each
//! handed over as its raw text (borrowed, never copied), so a 64 MB batch is
//! never held twice and a bad element cannot spoil its neighbours.

use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::error::PayloadError;

/// Calls `on_element(ordinal, raw_text)` for each element, ordinal from 1.
/// A payload that is one object is one element (seed 002 sends one object).
/// Returns the number of elements, or why the payload as a whole is unreadable;
/// elements before a late syntax error have already been handed over, so the
/// caller must treat an error as failing the whole call.
pub fn for_each_element<'p>(
    payload: &'p str,
    mut on_element: impl FnMut(usize, &'p str),
) -> Result<usize, PayloadError> {
    match payload.trim_start().as_bytes().first() {
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_str(payload);
            let count = de
                .deserialize_seq(ElementsVisitor {
                    on_element: &mut on_element,
                })
                .map_err(classify)?;
            de.end().map_err(classify)?;
            Ok(count)
        }
        Some(b'{') => {
            let raw: &'p RawValue = serde_json::from_str(payload).map_err(classify)?;
            on_element(1, raw.get());
            Ok(1)
        }
        Some(_) => {
            // Valid JSON of the wrong shape is a different complaint from garbage.
            let value: &RawValue = serde_json::from_str(payload).map_err(classify)?;
            let found = match value.get().as_bytes().first() {
                Some(b'"') => "a string",
                Some(b'n') => "null",
                Some(b't') | Some(b'f') => "a boolean",
                _ => "a number",
            };
            Err(PayloadError::WrongShape { found })
        }
        None => Err(PayloadError::NotJson {
            message: "the payload is empty".into(),
        }),
    }
}

struct ElementsVisitor<'f, F> {
    on_element: &'f mut F,
}

impl<'de, F: FnMut(usize, &'de str)> Visitor<'de> for ElementsVisitor<'_, F> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut ordinal = 0;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            ordinal += 1;
            (self.on_element)(ordinal, raw.get());
        }
        Ok(ordinal)
    }
}

fn classify(e: serde_json::Error) -> PayloadError {
    let message = e.to_string();
    if message.starts_with("recursion limit exceeded") {
        PayloadError::TooDeep { message }
    } else {
        PayloadError::NotJson { message }
    }
}
