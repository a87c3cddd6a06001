//! Signed checkpoints: `(tree size, root hash, time)` signed with the appliance's Ed25519 key.
//!
//! A checkpoint also carries the tree's [`Frontier`] at its size (unsigned, but checked against
//! the signed root), so that records below it can be pruned and verification can restart from
//! it.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::keys::fingerprint;
use crate::merkle::{hex_hash, Frontier, Hash};
use crate::record::Timestamp;

/// A signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Number of records covered (`seq < size`).
    pub size: u64,
    /// RFC 9162 root over records `0..size`.
    #[serde(with = "hex_hash")]
    pub root: Hash,
    /// When it was made.
    pub time: Timestamp,
    /// `SHA256:` fingerprint of the signing key.
    pub key: String,
    /// Ed25519 signature over [`Checkpoint::signed_message`], hex.
    pub signature: String,
    /// The frontier at `size`, largest subtree first, hex.
    pub frontier: Vec<String>,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn signed_message(size: u64, root: &Hash, time: Timestamp) -> Vec<u8> {
        format!(
            "appl-audit checkpoint v1\nsize {size}\nroot {}\ntime {time}\n",
            hex::encode(root)
        )
        .into_bytes()
    }

    pub(crate) fn sign(f: &Frontier, time: Timestamp, key: &SigningKey) -> Self {
        let root = f.root();
        let sig = key.sign(&Checkpoint::signed_message(f.size(), &root, time));
        Checkpoint {
            size: f.size(),
            root,
            time,
            key: fingerprint(&key.verifying_key()),
            signature: hex::encode(sig.to_bytes()),
            frontier: f.nodes().iter().map(hex::encode).collect(),
        }
    }

    /// Checks the signature under `vk`.
    pub fn verify_signature(&self, vk: &VerifyingKey) -> Result<(), String> {
        let fp = fingerprint(vk);
        if self.key != fp {
            return Err(format!(
                "checkpoint at size {} was signed by key {}, not by the given key {fp}",
                self.size, self.key
            ));
        }
        let bytes = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| format!("checkpoint at size {}: malformed signature", self.size))?;
        vk.verify(
            &Checkpoint::signed_message(self.size, &self.root, self.time),
            &Signature::from_bytes(&bytes),
        )
        .map_err(|_| format!("checkpoint at size {}: bad signature", self.size))
    }

    /// The carried frontier, checked against the signed root.
    pub fn frontier(&self) -> Result<Frontier, String> {
        let nodes = self
            .frontier
            .iter()
            .map(|s| crate::record::parse_hash(s))
            .collect::<Result<Vec<_>, _>>()?;
        let f = Frontier::from_parts(self.size, nodes)?;
        if f.root() != self.root {
            return Err(format!(
                "checkpoint at size {}: frontier does not match its root",
                self.size
            ));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    #[test]
    fn sign_and_verify() {
        let sk = SigningKey::from_bytes(&[9; 32]);
        let mut f = Frontier::new();
        for i in 0..5u8 {
            f.push(leaf_hash(&[i]));
        }
        let cp = Checkpoint::sign(&f, Timestamp { unix_micros: 1 }, &sk);
        cp.verify_signature(&sk.verifying_key()).unwrap();
        assert_eq!(cp.frontier().unwrap(), f);
        let mut bad = cp.clone();
        bad.size = 4;
        assert!(bad.verify_signature(&sk.verifying_key()).is_err());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(cp
            .verify_signature(&other)
            .unwrap_err()
            .contains("signed by key"));
        let mut badf = cp.clone();
        badf.frontier.reverse();
        badf.frontier.push(badf.frontier[0].clone());
        assert!(badf.frontier().is_err());
    }
}
