//! The worker's error type: every variant says which file or setting is at fault and why.

use std::path::PathBuf;

use evalfleet_proto::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model, tokenizer or adapter file that is missing, malformed or of an unsupported kind.
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// Something the worker does not support (architecture, quant type, template, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An item that cannot be run as asked (for example a prompt that does not fit).
    #[error("item {item}: {message}")]
    Item { item: String, message: String },
    /// A group of ranks (tensor- or data-parallel) that cannot go on: one of them failed.
    #[error("rank group stopped: {0}")]
    GroupStopped(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The result that fails `item_id` of `lease` with `e`, not to be retried: an item error fails the
/// same way on any worker.
pub fn item_error(lease: &pb::Lease, item_id: &str, e: &Error) -> pb::ItemResult {
    pb::ItemResult {
        lease_id: lease.lease_id,
        item_id: item_id.to_string(),
        outcome: Some(pb::item_result::Outcome::Error(pb::ItemError {
            message: e.to_string(),
            retryable: false,
        })),
    }
}

/// [`item_error`] for every item of `lease` (a lease-wide cause, such as an unknown template).
pub fn fail_every_item(lease: &pb::Lease, e: &Error, sink: &mut dyn FnMut(pb::ItemResult)) {
    for item in &lease.items {
        sink(item_error(lease, &item.item_id, e));
    }
}
