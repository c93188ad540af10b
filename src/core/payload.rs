//! Streaming over a payload: a JSON array is walked element by element, each
//! read once, in place (`element::ElementSeed`: keys and raw values borrowed
//! from the payload, never copied) and handed over with its raw text, so a
//! 64 MB batch is never held twice and a bad element cannot spoil its
//! neighbours.

use serde::de::{Deserialize, Deserializer as _, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::element::{ElementSeed, ReadElement};
use super::error::PayloadError;

/// Calls `on_element(ordinal, raw_text, read)` for each element, ordinal from
/// 1; `element::validate_read(raw_text, read, ..)` validates it. A payload that
/// is one object is one element (seed 002 sends one object). Returns the number
/// of elements, or why the payload as a whole is unreadable; elements before a
/// late syntax error have already been handed over, so the caller must treat an
/// error as failing the whole call.
pub fn for_each_element<'p>(
    payload: &'p str,
    mut on_element: impl FnMut(usize, &'p str, ReadElement<'p>),
) -> Result<usize, PayloadError> {
    let start = payload.len() - payload.trim_start().len();
    match payload.as_bytes().get(start) {
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_str(payload);
            let count = de
                .deserialize_seq(ElementsVisitor {
                    payload,
                    cursor: start + 1,
                    on_element: &mut on_element,
                })
                .map_err(classify)?;
            de.end().map_err(classify)?;
            Ok(count)
        }
        Some(b'{') => {
            let raw: &'p RawValue = serde_json::from_str(payload).map_err(classify)?;
            on_element(1, raw.get(), ReadElement::unread());
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

struct ElementsVisitor<'p, 'f, F> {
    payload: &'p str,
    /// Where the previous element ends (first: just after the `[`).
    cursor: usize,
    on_element: &'f mut F,
}

impl<'p, F: FnMut(usize, &'p str, ReadElement<'p>)> Visitor<'p> for ElementsVisitor<'p, '_, F> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'p>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut ordinal = 0;
        while let Some(read) = seq.next_element_seed(ElementSeed)? {
            ordinal += 1;
            // serde_json has just read the element, so everything located
            // here is valid JSON: between elements only whitespace and one
            // comma, after an object's last value only whitespace and `}`.
            let bytes = self.payload.as_bytes();
            let mut start = skip_whitespace(bytes, self.cursor);
            if ordinal > 1 && bytes.get(start) == Some(&b',') {
                start = skip_whitespace(bytes, start + 1);
            }
            let after_object = read.last_value().and_then(|last| {
                let after = offset_in(self.payload, last.get())? + last.get().len();
                let close = skip_whitespace(bytes, after);
                (bytes.get(close) == Some(&b'}')).then_some(close + 1)
            });
            let end = match after_object {
                Some(end) => end,
                // Anything else is read again, as one raw value, to find its end.
                None => {
                    let rest = self.payload.get(start..).unwrap_or_default();
                    let mut de = serde_json::Deserializer::from_str(rest);
                    let raw =
                        <&RawValue>::deserialize(&mut de).map_err(serde::de::Error::custom)?;
                    start + raw.get().len()
                }
            };
            self.cursor = end;
            (self.on_element)(ordinal, &self.payload[start..end], read);
        }
        Ok(ordinal)
    }
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        at += 1;
    }
    at
}

/// Where `part` begins in `whole`, if it is a slice of it (a borrowed
/// `&RawValue` of the payload always is; anything else is read again).
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let offset = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (offset + part.len() <= whole.len()).then_some(offset)
}

fn classify(e: serde_json::Error) -> PayloadError {
    let message = e.to_string();
    if message.starts_with("recursion limit exceeded") {
        PayloadError::TooDeep { message }
    } else {
        PayloadError::NotJson { message }
    }
}
