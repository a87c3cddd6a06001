//! Picking each request's next token from a step's logits.
//!
//! llama.cpp's samplers start by copying every logit into an array of (token, logit, p)
//! candidates: 3 MB per token for a 262,144-token vocabulary such as Gemma 3's, and its
//! repetition penalty then looks every candidate up in a hash map. At 8 streams that was a few
//! percent of each step. Here the common cases read the logits in place:
//!
//! - **Greedy** (temperature 0): the most likely token, ties to the lowest id, as llama.cpp's
//!   greedy sampler picks it.
//! - **Top-k** (temperature > 0, top_k > 0): the k most likely tokens are selected in one pass;
//!   only those k go through llama.cpp's top-p, min-p, temperature and distribution samplers,
//!   which is what its chain `top_k → top_p → min_p → temp → dist` computes.
//! - With a **repetition penalty**, the logits are copied once and the penalty is applied to the
//!   at most `repeat_last_n` recent tokens, with llama.cpp's rule (positive logits divided,
//!   others multiplied).
//!
//! Only top_k = 0 with temperature > 0 (sampling from the whole vocabulary) still builds the
//! full candidate array for llama.cpp.

use std::collections::{HashMap, VecDeque};

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use crate::Sampling;

/// The recent-token window of the repetition penalty.
#[derive(Debug, Clone)]
struct Penalty {
    factor: f32,
    last_n: usize,
    recent: VecDeque<i32>,
    counts: HashMap<i32, u32>,
}

impl Penalty {
    fn accept(&mut self, token: i32) {
        if self.last_n == 0 {
            return;
        }
        if self.recent.len() == self.last_n {
            if let Some(old) = self.recent.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.recent.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Applies the penalty to the recent tokens' logits.
    fn apply(&self, logits: &mut [f32]) {
        for &t in self.counts.keys() {
            if let Some(l) = usize::try_from(t).ok().and_then(|i| logits.get_mut(i)) {
                if *l <= 0.0 {
                    *l *= self.factor;
                } else {
                    *l /= self.factor;
                }
            }
        }
    }
}

enum Mode {
    Greedy,
    TopK {
        k: usize,
        /// top-p, min-p, temperature, distribution: applied to the k candidates.
        rest: LlamaSampler,
    },
    /// Temperature > 0 over the whole vocabulary.
    Full {
        chain: LlamaSampler,
    },
}

/// One request's sampler. Its state (the penalty window, the random generator) moves with the
/// request when it is paused.
pub struct Sampler {
    mode: Mode,
    penalty: Option<Penalty>,
    /// Logits with the penalty applied, reused from token to token.
    scratch: Vec<f32>,
    /// Candidates handed to llama.cpp, reused.
    candidates: Vec<LlamaTokenData>,
    /// The top-k selection, reused.
    best: Vec<(usize, f32)>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Greedy => "greedy",
            Mode::TopK { .. } => "top-k",
            Mode::Full { .. } => "full",
        };
        f.debug_struct("Sampler")
            .field("mode", &mode)
            .field("penalty", &self.penalty)
            .finish_non_exhaustive()
    }
}

/// The index of the largest value, the lowest index among equals; 0 for an empty slice.
pub fn argmax(v: &[f32]) -> usize {
    // Lane-wise maxima first (vectorises), then the first index that holds the maximum.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = tail
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    v.iter().position(|&x| x == max).unwrap_or(0)
}

/// The `k` largest values as (index, value), largest first, lower index first among equals.
pub fn top_k(v: &[f32], k: usize, out: &mut Vec<(usize, f32)>) {
    out.clear();
    if k == 0 {
        return;
    }
    // A sorted buffer of the best so far; most values fall below its smallest and cost one
    // comparison.
    let mut floor = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if out.len() == k && x.partial_cmp(&floor) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let at = out.partition_point(|&(_, y)| y >= x);
        out.insert(at, (i, x));
        if out.len() > k {
            out.pop();
        }
        if out.len() == k {
            floor = out[k - 1].1;
        }
    }
}

impl Sampler {
    pub fn new(s: &Sampling) -> Self {
        let penalty = ((s.repeat_penalty - 1.0).abs() > f32::EPSILON).then(|| Penalty {
            factor: s.repeat_penalty,
            last_n: usize::try_from(s.repeat_last_n.max(0)).unwrap_or(0),
            recent: VecDeque::new(),
            counts: HashMap::new(),
        });
        let mode = if s.temperature <= 0.0 {
            Mode::Greedy
        } else {
            let rest = [
                LlamaSampler::top_p(s.top_p, 1),
                LlamaSampler::min_p(s.min_p, 1),
                LlamaSampler::temp(s.temperature),
                LlamaSampler::dist(s.seed),
            ];
            match usize::try_from(s.top_k) {
                Ok(k) if k > 0 => Mode::TopK {
                    k,
                    rest: LlamaSampler::chain_simple(rest),
                },
                _ => Mode::Full {
                    chain: LlamaSampler::chain_simple(rest),
                },
            }
        };
        Self {
            mode,
            penalty,
            scratch: Vec::new(),
            candidates: Vec::new(),
            best: Vec::new(),
        }
    }

    /// Feeds tokens that precede generation (the prompt) to the penalty window.
    pub fn accept_prompt(&mut self, tokens: &[i32]) {
        if let Some(p) = &mut self.penalty {
            let skip = tokens.len().saturating_sub(p.last_n);
            for &t in &tokens[skip..] {
                p.accept(t);
            }
        }
    }

    /// Picks the next token from one row of logits and records it.
    pub fn sample(&mut self, logits: &[f32]) -> LlamaToken {
        let logits: &[f32] = match &self.penalty {
            Some(p) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(logits);
                p.apply(&mut self.scratch);
                &self.scratch
            }
            None => logits,
        };
        let token = match &mut self.mode {
            Mode::Greedy => argmax(logits),
            Mode::TopK { k, rest } => {
                top_k(logits, *k, &mut self.best);
                self.candidates.clear();
                self.candidates.extend(self.best.iter().map(|&(i, l)| {
                    LlamaTokenData::new(LlamaToken(i32::try_from(i).unwrap_or(0)), l, 0.0)
                }));
                choose(&mut self.candidates, rest, true)
            }
            Mode::Full { chain } => {
                self.candidates.clear();
                self.candidates
                    .extend(logits.iter().enumerate().map(|(i, &l)| {
                        LlamaTokenData::new(LlamaToken(i32::try_from(i).unwrap_or(0)), l, 0.0)
                    }));
                choose(&mut self.candidates, chain, false)
            }
        };
        let token = i32::try_from(token).unwrap_or(0);
        if let Some(p) = &mut self.penalty {
            p.accept(token);
        }
        LlamaToken(token)
    }
}

/// Runs llama.cpp samplers over candidates and returns the chosen token id.
fn choose(candidates: &mut Vec<LlamaTokenData>, sampler: &mut LlamaSampler, sorted: bool) -> usize {
    let mut array = LlamaTokenDataArray::new(std::mem::take(candidates), sorted);
    array.apply_sampler(sampler);
    let token = array
        .selected_token()
        .or_else(|| array.data.first().map(LlamaTokenData::id))
        .map_or(0, |t| usize::try_from(t.0).unwrap_or(0));
    *candidates = std::mem::take(&mut array.data);
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima_at_any_position() {
        let cases: &[(&[f32], usize)] = &[
            (&[], 0),
            (&[1.0], 0),
            (&[0.0, 2.0, 2.0], 1),
            (&[-3.0, -1.0, -2.0], 1),
            (&[f32::NEG_INFINITY, f32::NEG_INFINITY], 0),
        ];
        for (v, want) in cases {
            assert_eq!(argmax(v), *want, "{v:?}");
        }
        // Beyond one chunk of lanes, in the tail, and ties across lanes.
        for n in [15, 16, 17, 100, 1000] {
            for at in [0, n / 2, n - 1] {
                let mut v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.1).collect();
                v[at] = 5.0;
                assert_eq!(argmax(&v), at, "n {n} at {at}");
                let later = (at + 3).min(n - 1);
                v[later] = 5.0;
                assert_eq!(argmax(&v), at.min(later), "tie n {n}");
            }
        }
    }

    #[test]
    fn top_k_keeps_the_largest_in_order() {
        let v = [0.5, 3.0, -1.0, 3.0, 2.0, 0.0, 7.0];
        let mut out = Vec::new();
        top_k(&v, 3, &mut out);
        assert_eq!(out, [(6, 7.0), (1, 3.0), (3, 3.0)]);
        top_k(&v, 10, &mut out);
        assert_eq!(out.len(), v.len());
        assert_eq!(out[0], (6, 7.0));
        assert_eq!(out[6], (2, -1.0));
        top_k(&v, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_penalty_follows_llama_cpp_and_forgets_tokens_outside_its_window() {
        let mut p = Penalty {
            factor: 2.0,
            last_n: 2,
            recent: VecDeque::new(),
            counts: HashMap::new(),
        };
        p.accept(1);
        p.accept(2);
        p.accept(2);
        // Token 1 left the window of 2; token 2 is in it twice.
        let mut l = [4.0, 4.0, 4.0, -4.0];
        p.apply(&mut l);
        assert_eq!(l, [4.0, 4.0, 2.0, -4.0]);
        p.accept(3);
        let mut l = [4.0, 4.0, 4.0, -4.0];
        p.apply(&mut l);
        assert_eq!(l, [4.0, 4.0, 2.0, -8.0]);
    }

    #[test]
    fn greedy_with_a_penalty_moves_off_a_repeated_token() {
        let mut s = Sampler::new(&Sampling {
            temperature: 0.0,
            repeat_penalty: 4.0,
            repeat_last_n: 8,
            ..Sampling::default()
        });
        let logits = [1.0, 3.0, 2.0];
        assert_eq!(s.sample(&logits).0, 1);
        // 3.0 / 4 < 2.0 now.
        assert_eq!(s.sample(&logits).0, 2);
        // Both penalised: 0.75, 0.5 against 1.0.
        assert_eq!(s.sample(&logits).0, 0);
        let mut plain = Sampler::new(&Sampling {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Sampling::default()
        });
        assert_eq!(plain.sample(&logits).0, 1);
        assert_eq!(plain.sample(&logits).0, 1);
    }
}
