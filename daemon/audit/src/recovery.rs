//! After an unclean stop: which requests of the previous run were admitted but never completed.
//!
//! A run starts with `daemon.start` and, when it stops cleanly, ends with `daemon.stop`. If the
//! newest record is not `daemon.stop`, the previous run ended some other way (a crash, SIGKILL,
//! power loss), and the requests it admitted without a `completed` record have no outcome in the
//! log. The daemon calls [`unfinished`] before it records its own start and records a
//! `completed` outcome for each, so every admitted request has one.

use std::collections::BTreeMap;

use crate::error::AuditError;
use crate::record::{Action, Ident, Phase, Record};
use crate::store::StoreReader;

/// What an unclean stop left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unclean {
    /// The sequence number of the previous run's last record.
    pub last_seq: u64,
    /// The `admitted` records of the previous run that have no `completed` record, oldest
    /// first.
    pub unfinished: Vec<Record>,
}

/// `None` when the store is empty or the previous run stopped cleanly.
pub fn unfinished(reader: &StoreReader) -> Result<Option<Unclean>, AuditError> {
    let Some(last) = reader.tail(1)?.pop() else {
        return Ok(None);
    };
    if last.record.action == Action::DaemonStop {
        return Ok(None);
    }
    // Find where the previous run started (or the oldest record kept), newest first.
    let mut start = reader.first_seq()?;
    for r in reader.iter_rev() {
        let r = r?;
        if r.action == Action::DaemonStart {
            start = r.seq;
            break;
        }
    }
    let mut open: BTreeMap<Ident, Record> = BTreeMap::new();
    for r in reader.iter_from(start) {
        let r = r?;
        let Some(id) = r.request_id.clone() else {
            continue;
        };
        match r.phase {
            Phase::Admitted => {
                open.insert(id, r);
            }
            Phase::Completed => {
                open.remove(&id);
            }
            Phase::Event => {}
        }
    }
    let mut unfinished: Vec<Record> = open.into_values().collect();
    unfinished.sort_by_key(|r| r.seq);
    Ok(Some(Unclean {
        last_seq: last.record.seq,
        unfinished,
    }))
}
