//! What every source of examples produces: a dataset of a train and a test split, and the
//! errors of making one. The built-in sources and the CSV loader are in [`crate::data`], text
//! corpora in [`crate::text`]; both build on this.

use thiserror::Error;

/// Most input values (rows × features) of a test split a peer evaluates on: all of a point
/// set's, 4 096 windows of an 8-byte char LM's, 1 024 of a 32-token transformer's. Evaluation
/// is a figure for people watching; a 124 M-parameter model's whole split would take minutes.
pub const HELD_OUT_VALUES: usize = 32_768;

/// Most input values × parameters a held-out evaluation reads (about its multiply-adds): a
/// bound only big models meet (GPT-2 small's 124 M parameters: 34 windows of 32 tokens, a few
/// seconds on two cores, where 1 024 windows took half a minute).
pub const HELD_OUT_WORK: u64 = 1 << 37;

/// Dense features with labels, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    pub features: usize,
    pub x: Vec<f32>,
    pub y: Vec<u32>,
}

impl Split {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The rows at `indices`, in that order.
    pub fn gather(&self, indices: &[usize]) -> Split {
        let f = self.features;
        let mut x = Vec::with_capacity(indices.len() * f);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.x[i * f..(i + 1) * f]);
            y.push(self.y[i]);
        }
        Split { features: f, x, y }
    }

    /// The rows in `range`.
    /// The first rows, holding at most `most_values` input values and [`HELD_OUT_WORK`] for a
    /// model of `parameters` (one row at least): the slice of a test split a peer evaluates on
    /// (`most_values`: [`HELD_OUT_VALUES`] unless the caller evaluates more often).
    pub fn held_out_slice(&self, parameters: usize, most_values: usize) -> Split {
        let by_work = HELD_OUT_WORK / parameters.max(1) as u64;
        let values = most_values.min(usize::try_from(by_work).unwrap_or(usize::MAX));
        let rows = (values / self.features.max(1)).max(1).min(self.len());
        self.rows(0..rows)
    }

    pub fn rows(&self, range: std::ops::Range<usize>) -> Split {
        let f = self.features;
        Split {
            features: f,
            x: self.x[range.start * f..range.end * f].to_vec(),
            y: self.y[range].to_vec(),
        }
    }

    /// Peer `index`'s share of `count` disjoint, interleaved shards.
    pub fn shard(&self, index: usize, count: usize) -> Split {
        assert!(index < count, "shard {index} of {count}");
        let rows: Vec<usize> = (index..self.len()).step_by(count).collect();
        self.gather(&rows)
    }

    pub(crate) fn push_row(&mut self, row: &[f32], label: u32) {
        self.x.extend_from_slice(row);
        self.y.push(label);
    }
}

/// A labelled dataset with a fixed train/test split.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub classes: usize,
    pub class_names: Vec<String>,
    pub train: Split,
    pub test: Split,
}

impl Dataset {
    /// Number of input features.
    pub fn features(&self) -> usize {
        self.train.features
    }
}

#[derive(Debug, Error)]
pub enum DataError {
    #[error(
        "unknown dataset `{0}`: use spirals, moons, circles, tales, recipes, reviews (optionally as builtin:NAME), a .csv or a .txt file"
    )]
    UnknownBuiltin(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CSV line {line}: {message}")]
    Csv { line: u64, message: String },
    #[error("CSV line {line}, column {column}: `{value}` is not a number")]
    NotANumber {
        line: u64,
        column: usize,
        value: String,
    },
    #[error("CSV line {line} has {got} columns, but the first row has {expected}")]
    Ragged {
        line: u64,
        expected: usize,
        got: usize,
    },
    #[error("CSV needs at least one feature column and a label column; found {0} column(s)")]
    TooFewColumns(usize),
    #[error("CSV has {0} data rows; at least 10 are needed for a train/test split")]
    TooFewRows(usize),
    #[error("CSV labels have only one class (`{0}`); a classifier needs at least two")]
    OneClass(String),
    #[error(
        "a CSV of texts for a prompt classifier begins with the header `text,label`; this one \
         begins with `{0}`"
    )]
    TextHeader(String),
    #[error("CSV has {0} classes; at most 256 are supported")]
    TooManyClasses(usize),
    #[error(
        "the text has {tokens} tokens (bytes, for a byte-level model); this model needs at least {needed}"
    )]
    TooLittleText { tokens: usize, needed: usize },
    #[error("{0}")]
    WrongKind(String),
}
