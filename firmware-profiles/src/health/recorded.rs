//! Recorded GPU health: a JSON file read afresh at every sample, standing in for GPUs where
//! there are none (tests, demos, a drill of what an operator sees when a GPU fails). The file
//! holds `{"gpus": [GpuHealth, ...]}`; whoever writes it changes what the next sample reports.
//! Write it atomically (a temporary file renamed over it), as a half-written file is an error.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{GpuHealth, HealthSource};
use crate::probe::ProbeError;

/// The recorded file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordedSample {
    #[serde(default)]
    pub gpus: Vec<GpuHealth>,
}

impl RecordedSample {
    /// Pretty JSON, as the file holds it.
    pub fn to_json(&self) -> String {
        // Plain data: serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// GPU health read from a recorded file.
#[derive(Debug, Clone)]
pub struct RecordedHealth {
    path: PathBuf,
}

impl RecordedHealth {
    pub fn new(path: impl Into<PathBuf>) -> RecordedHealth {
        RecordedHealth { path: path.into() }
    }
}

impl HealthSource for RecordedHealth {
    fn name(&self) -> &'static str {
        "recorded"
    }

    fn sample(&mut self) -> Result<Vec<GpuHealth>, ProbeError> {
        let path = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|source| ProbeError::Io {
            path: path.clone(),
            source,
        })?;
        let s: RecordedSample = serde_json::from_str(&text).map_err(|e| ProbeError::Parse {
            path,
            reason: e.to_string(),
        })?;
        Ok(s.gpus)
    }
}
