//! The one interface both write paths offer: the fast path (`direct`, COPY's
//! techniques on one heap relation) and the INSERT path (`insert_path`, SQL
//! through SPI). The writer routes each validated element to one of them.

use super::datum::Column;
use crate::core::element::ValidElement;
use crate::core::error::Rejection;

/// What became of one row whose event key was already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// The stored row has the same values: a retry.
    Duplicate,
    /// The stored row differs, first in this column: the retry disagrees with
    /// what is stored, and nothing was stored.
    Conflict(Column),
    /// Not a repeat after all: a trigger or rule kept the row out (reported by
    /// the set-wise INSERT path, which learns it only when its batch is written).
    Skipped,
}

/// How an element's rows fared, counted per row.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// New rows (or rows buffered to be written by the next flush).
    pub inserted: u32,
    /// Rows whose event key was already stored.
    pub duplicate: u32,
    /// Rows a trigger or rule kept out of the table (INSERT path only).
    pub skipped: u32,
    /// The first row whose event key is stored with other values, if any.
    pub conflict: Option<Column>,
    /// The rows not stored, by their measurement's index in the element, and
    /// whether each was refused (a conflict, a trigger) rather than a duplicate.
    pub not_stored: Vec<(usize, bool)>,
}

impl Stored {
    /// Row `measurement` repeats a stored event (or was kept out).
    pub fn repeat(&mut self, measurement: usize, repeat: Repeat) {
        self.not_stored
            .push((measurement, repeat != Repeat::Duplicate));
        match repeat {
            Repeat::Duplicate => self.duplicate += 1,
            Repeat::Conflict(column) => {
                self.duplicate += 1;
                self.conflict.get_or_insert(column);
            }
            Repeat::Skipped => self.skipped += 1,
        }
    }
}

/// A buffered row found at flush time to repeat a stored event.
#[derive(Clone, Copy, Debug)]
pub struct LateRepeat {
    pub ordinal: usize,
    pub measurement: usize,
    pub repeat: Repeat,
}

pub trait Sink {
    /// Stores every row of one element, or buffers them for a later flush; or
    /// refuses the whole element, storing none of its rows, when a constraint
    /// of the table refuses one of them (the fast path checks NOT NULL and
    /// CHECK constraints as it builds each row; the INSERT path lets the
    /// INSERT raise, as it raises anything else a DBA's trigger or rule does).
    fn put(&mut self, ordinal: usize, element: &ValidElement) -> Result<Stored, Rejection>;

    /// Writes whatever is buffered and releases the sink. Returns the buffered
    /// rows that turned out, when written, to be a repeat after all (the same
    /// event came twice in one buffer, or a concurrent session stored it
    /// first), by element ordinal and measurement index.
    fn finish(self: Box<Self>) -> Vec<LateRepeat>;
}
