//! RFC 9162 Merkle tree hashing, a compact frontier, and subset ("multi") proofs.
//!
//! `leaf = SHA-256(0x00 || data)`, `node = SHA-256(0x01 || left || right)`, and the tree over
//! `n` leaves splits at the largest power of two below `n` (RFC 9162 §2.1.1).

use sha2::{Digest as _, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || l || r)`.
pub fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// The perfect subtrees that make up a tree of `size` leaves, largest first: one per set bit of
/// `size`. Enough to append further leaves and to compute the root, in `O(log n)` space.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Rebuilds a frontier from stored parts; `nodes.len()` must equal the popcount of `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, String> {
        if nodes.len() != size.count_ones() as usize {
            return Err(format!(
                "frontier for size {size} needs {} nodes, has {}",
                size.count_ones(),
                nodes.len()
            ));
        }
        Ok(Frontier { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree hashes, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The ranges `[lo, hi)` of the subtrees, largest first.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut lo = 0;
        for bit in (0..64).rev() {
            let w = 1u64 << bit;
            if self.size & w != 0 {
                out.push((lo, lo + w));
                lo += w;
            }
        }
        out
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut acc = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            // A set low bit means a subtree of the same size is on top: merge with it.
            let left = self
                .nodes
                .pop()
                .expect("popcount invariant: one node per set bit");
            acc = node_hash(&left, &acc);
            s >>= 1;
        }
        self.nodes.push(acc);
        self.size += 1;
    }

    /// The RFC 9162 root hash (`SHA-256("")` for the empty tree).
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, n| node_hash(n, &acc))
    }
}

/// True if `[lo, hi)` is a node of the RFC 9162 tree over `n` leaves.
pub fn is_node(lo: u64, hi: u64, n: u64) -> bool {
    let (mut a, mut b) = (0u64, n);
    loop {
        if lo == a && hi == b {
            return true;
        }
        if b - a <= 1 || lo < a || hi > b || lo >= hi {
            return false;
        }
        let k = largest_pow2_below(b - a);
        let mid = a + k;
        if lo >= mid {
            a = mid;
        } else if hi <= mid {
            b = mid;
        } else {
            return false;
        }
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn largest_pow2_below(n: u64) -> u64 {
    let p = 1u64 << (63 - (n - 1).leading_zeros());
    debug_assert!(p < n && p * 2 >= n);
    p
}

/// A subtree hash that stands in for leaves left out of an export.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Gap {
    /// First leaf index covered.
    pub lo: u64,
    /// One past the last leaf index covered.
    pub hi: u64,
    /// The subtree's hash, hex.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

pub(crate) mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        crate::record::parse_hash(&s).map_err(serde::de::Error::custom)
    }
}

struct PNode {
    lo: u64,
    hi: u64,
    hash: Hash,
    selected: bool,
}

/// Streams leaves in order and collects the [`Gap`]s that, together with the selected leaves,
/// let a verifier recompute the root: the maximal subtrees with no selected leaf.
pub struct SubsetProver {
    stack: Vec<PNode>,
    gaps: Vec<Gap>,
    size: u64,
}

impl SubsetProver {
    /// Starts after an already-hashed (for example pruned) prefix, none of it selected.
    pub fn starting_at(base: &Frontier) -> Self {
        let stack = base
            .ranges()
            .into_iter()
            .zip(base.nodes())
            .map(|((lo, hi), h)| PNode {
                lo,
                hi,
                hash: *h,
                selected: false,
            })
            .collect();
        SubsetProver {
            stack,
            gaps: Vec::new(),
            size: base.size(),
        }
    }

    /// Number of leaves seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn merge(&mut self, l: PNode, r: PNode) -> PNode {
        if l.selected && !r.selected {
            self.gaps.push(Gap {
                lo: r.lo,
                hi: r.hi,
                hash: r.hash,
            });
        } else if !l.selected && r.selected {
            self.gaps.push(Gap {
                lo: l.lo,
                hi: l.hi,
                hash: l.hash,
            });
        }
        PNode {
            lo: l.lo,
            hi: r.hi,
            hash: node_hash(&l.hash, &r.hash),
            selected: l.selected || r.selected,
        }
    }

    /// Appends the next leaf.
    pub fn push(&mut self, leaf: Hash, selected: bool) {
        let lo = self.size;
        self.size += 1;
        let mut top = PNode {
            lo,
            hi: lo + 1,
            hash: leaf,
            selected,
        };
        while let Some(prev) = self.stack.last() {
            if prev.hi - prev.lo != top.hi - top.lo {
                break;
            }
            let l = self.stack.pop().expect("checked by last()");
            top = self.merge(l, top);
        }
        self.stack.push(top);
    }

    /// Finishes: the root and the gaps, sorted by position.
    pub fn finish(mut self) -> (Hash, Vec<Gap>) {
        let Some(mut acc) = self.stack.pop() else {
            return (empty_root(), Vec::new());
        };
        while let Some(l) = self.stack.pop() {
            acc = self.merge(l, acc);
        }
        if !acc.selected {
            self.gaps.push(Gap {
                lo: acc.lo,
                hi: acc.hi,
                hash: acc.hash,
            });
        }
        self.gaps.sort_by_key(|g| g.lo);
        (acc.hash, self.gaps)
    }
}

/// Recomputes a root from items (leaves and gaps) that tile `[0, n)` in order.
pub struct RootBuilder {
    n: u64,
    pos: u64,
    stack: Vec<(u64, u64, Hash)>,
}

impl RootBuilder {
    /// For a tree of `n` leaves.
    pub fn new(n: u64) -> Self {
        RootBuilder {
            n,
            pos: 0,
            stack: Vec::new(),
        }
    }

    /// The next leaf index expected.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Adds the next item, which must start at [`RootBuilder::pos`] and be a node of the tree.
    pub fn push(&mut self, lo: u64, hi: u64, hash: Hash) -> Result<(), String> {
        if lo != self.pos {
            return Err(format!("item [{lo},{hi}) does not start at {}", self.pos));
        }
        if !is_node(lo, hi, self.n) {
            return Err(format!(
                "[{lo},{hi}) is not a subtree of a {}-leaf tree",
                self.n
            ));
        }
        self.pos = hi;
        let mut top = (lo, hi, hash);
        while let Some(&(plo, phi, ph)) = self.stack.last() {
            let w = phi - plo;
            if w != top.1 - top.0 || !w.is_power_of_two() || plo % (2 * w) != 0 {
                break;
            }
            self.stack.pop();
            top = (plo, top.1, node_hash(&ph, &top.2));
        }
        self.stack.push(top);
        Ok(())
    }

    /// The root, once every leaf is covered.
    pub fn finish(mut self) -> Result<Hash, String> {
        if self.pos != self.n {
            return Err(format!("items end at {}, tree has {}", self.pos, self.n));
        }
        let Some(mut acc) = self.stack.pop() else {
            return Ok(empty_root());
        };
        while let Some(l) = self.stack.pop() {
            acc = (l.0, acc.1, node_hash(&l.2, &acc.2));
        }
        Ok(acc.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight from RFC 9162 §2.1.1, recursively.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = largest_pow2_below(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 test vector: the leaf hash of the empty string.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn frontier_matches_recursive_definition() {
        let ls = leaves(70);
        let mut f = Frontier::new();
        for n in 0..=ls.len() {
            assert_eq!(f.root(), mth(&ls[..n]), "size {n}");
            assert_eq!(f.ranges().len(), f.nodes().len());
            if n < ls.len() {
                f.push(ls[n]);
            }
        }
        let g = Frontier::from_parts(f.size(), f.nodes().to_vec()).unwrap();
        assert_eq!(g.root(), f.root());
        assert!(Frontier::from_parts(5, vec![[0; 32]]).is_err());
    }

    #[test]
    fn subset_proofs_round_trip() {
        let ls = leaves(37);
        for base in [0usize, 1, 8, 13, 32] {
            for pattern in 0..40u64 {
                let sel = |i: usize| i >= base && (i as u64 * 7 + pattern) % 5 == 0;
                let mut bf = Frontier::new();
                for l in &ls[..base] {
                    bf.push(*l);
                }
                let mut p = SubsetProver::starting_at(&bf);
                for (i, l) in ls.iter().enumerate().skip(base) {
                    p.push(*l, sel(i));
                }
                let (root, gaps) = p.finish();
                assert_eq!(root, mth(&ls));
                let mut rb = RootBuilder::new(ls.len() as u64);
                let mut gi = gaps.iter().peekable();
                for (i, l) in ls.iter().enumerate() {
                    while let Some(g) = gi.peek() {
                        if g.lo > i as u64 {
                            break;
                        }
                        rb.push(g.lo, g.hi, g.hash).unwrap();
                        gi.next();
                    }
                    if sel(i) {
                        rb.push(i as u64, i as u64 + 1, *l).unwrap();
                    }
                }
                for g in gi {
                    rb.push(g.lo, g.hi, g.hash).unwrap();
                }
                assert_eq!(rb.finish().unwrap(), root, "base {base} pattern {pattern}");
            }
        }
    }

    #[test]
    fn is_node_shapes() {
        assert!(is_node(0, 13, 13));
        assert!(is_node(8, 13, 13));
        assert!(is_node(12, 13, 13));
        assert!(is_node(4, 8, 13));
        assert!(!is_node(4, 12, 13));
        assert!(is_node(8, 12, 13));
        assert!(!is_node(1, 3, 13));
        let mut rb = RootBuilder::new(4);
        assert!(rb.push(1, 2, [0; 32]).is_err());
    }
}
