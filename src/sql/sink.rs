//! The one interface both write paths offer: the fast path (`direct`, COPY's
//! techniques on one heap relation) and the INSERT path (`insert_path`, SQL
//! through SPI). The writer routes each validated element to one of them.

use crate::core::element::ValidElement;

/// How an element's rows fared, counted per row.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// New rows (or rows buffered to be written by the next flush).
    pub inserted: u32,
    /// Rows whose event key was already stored.
    pub duplicate: u32,
    /// Rows a trigger or rule kept out of the table (INSERT path only).
    pub skipped: u32,
}

impl std::ops::AddAssign for Stored {
    fn add_assign(&mut self, other: Stored) {
        self.inserted += other.inserted;
        self.duplicate += other.duplicate;
        self.skipped += other.skipped;
    }
}

pub trait Sink {
    /// Stores every row of one element, or buffers them for a later flush.
    fn put(&mut self, ordinal: usize, element: &ValidElement) -> Stored;

    /// Writes whatever is buffered and releases the sink. Returns the ordinals
    /// of elements one of whose buffered rows turned out, when written, to be a
    /// duplicate after all (one entry per such row): a concurrent session stored
    /// the same event first.
    fn finish(self: Box<Self>) -> Vec<usize>;
}
