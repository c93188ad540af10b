//! The one interface both write paths offer: the fast path (`direct`, COPY's
//! techniques on one heap relation) and the INSERT path (`insert_path`, SQL
//! through SPI). The writer routes each validated element to one of them.

use super::datum::Column;
use crate::core::element::ValidElement;

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
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// New rows (or rows buffered to be written by the next flush).
    pub inserted: u32,
    /// Rows whose event key was already stored.
    pub duplicate: u32,
    /// Rows a trigger or rule kept out of the table (INSERT path only).
    pub skipped: u32,
    /// The first row whose event key is stored with other values, if any.
    pub conflict: Option<Column>,
}

impl Stored {
    pub fn repeat(&mut self, repeat: Repeat) {
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

impl std::ops::AddAssign for Stored {
    fn add_assign(&mut self, other: Stored) {
        self.inserted += other.inserted;
        self.duplicate += other.duplicate;
        self.skipped += other.skipped;
        self.conflict = self.conflict.or(other.conflict);
    }
}

pub trait Sink {
    /// Stores every row of one element, or buffers them for a later flush.
    fn put(&mut self, ordinal: usize, element: &ValidElement) -> Stored;

    /// Writes whatever is buffered and releases the sink. Returns the ordinals
    /// of elements one of whose buffered rows turned out, when written, to be a
    /// repeat after all (one entry per such row): the same event came twice in
    /// one buffer, or a concurrent session stored it first.
    fn finish(self: Box<Self>) -> Vec<(usize, Repeat)>;
}
