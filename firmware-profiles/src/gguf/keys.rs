//! Typed lookups in GGUF metadata: required and optional integers, and per-layer arrays.

use std::collections::BTreeMap;

use super::{GgufError, MetaValue};

pub(super) fn req_u64(metadata: &BTreeMap<String, MetaValue>, key: &str) -> Result<u64, GgufError> {
    opt_first_u64(metadata, key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
}

/// An integer key, or the first element when it is a per-layer array.
pub(super) fn opt_first_u64(
    metadata: &BTreeMap<String, MetaValue>,
    key: &str,
) -> Result<Option<u64>, GgufError> {
    let bad = |reason: &str| GgufError::BadKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    match metadata.get(key) {
        None => Ok(None),
        Some(MetaValue::Array {
            values: Some(vals), ..
        }) => vals
            .first()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| bad("not an unsigned integer array"))
            })
            .transpose(),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad("not an unsigned integer")),
    }
}

/// A scalar or per-layer integer key expanded to one value per layer.
pub(super) fn per_layer_u32(
    metadata: &BTreeMap<String, MetaValue>,
    key: &str,
    n_layer: u32,
) -> Result<Option<Vec<u32>>, GgufError> {
    let bad = |reason: String| GgufError::BadKey {
        key: key.to_string(),
        reason,
    };
    match metadata.get(key) {
        None => Ok(None),
        Some(MetaValue::Array {
            values: Some(vals), ..
        }) => {
            if vals.len() != n_layer as usize {
                return Err(bad(format!(
                    "has {} entries for {n_layer} layers",
                    vals.len()
                )));
            }
            vals.iter()
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| bad("not an unsigned integer array".into()))
                        .and_then(|u| to_u32(key, u))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(v) => {
            let u = v
                .as_u64()
                .ok_or_else(|| bad("not an unsigned integer".into()))?;
            Ok(Some(vec![to_u32(key, u)?; n_layer as usize]))
        }
    }
}

pub(super) fn to_u32(key: &str, v: u64) -> Result<u32, GgufError> {
    u32::try_from(v).map_err(|_| GgufError::BadKey {
        key: key.to_string(),
        reason: format!("{v} does not fit in 32 bits"),
    })
}
