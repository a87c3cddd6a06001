//! Benchmark prompts: distinct by default, so that no request reuses another's cached prefix by
//! accident; a shared "system prompt" before each distinct part when asked; or lines of a file.
//!
//! applctl does not link a tokenizer. Prompts are built from common English words, and the
//! target's own tokenizer (appld's `Tokenize`, llama-server's `/tokenize`) says how many tokens
//! a word costs, so that `--prompt-tokens N` lands close to N. The report shows the prompt
//! length the server actually counted.

/// Common English words; most are a single token with their leading space in large
/// vocabularies. Order is irrelevant; the generator picks at random.
const WORDS: &[&str] = &[
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "foot",
    "boy",
    "age",
    "policy",
    "process",
    "music",
    "market",
    "sense",
    "nation",
    "plan",
    "college",
    "interest",
    "death",
    "experience",
    "effect",
    "class",
    "control",
    "care",
    "field",
    "development",
    "role",
    "effort",
    "rate",
    "heart",
    "drug",
    "show",
    "leader",
    "light",
    "voice",
    "wife",
    "police",
    "mind",
    "price",
    "report",
    "decision",
    "son",
    "view",
    "relationship",
    "town",
    "road",
    "arm",
    "difference",
    "value",
    "building",
    "action",
    "model",
    "season",
    "society",
    "tax",
    "director",
    "position",
    "player",
    "record",
    "paper",
    "space",
    "ground",
    "form",
    "event",
    "official",
    "matter",
    "center",
    "couple",
    "site",
    "project",
    "activity",
    "star",
    "table",
    "need",
    "court",
    "oil",
    "situation",
    "cost",
    "industry",
    "figure",
    "street",
    "image",
    "phone",
    "data",
    "picture",
    "practice",
    "piece",
    "land",
    "product",
    "doctor",
    "wall",
    "patient",
    "worker",
    "news",
    "test",
    "movie",
    "north",
    "love",
    "support",
    "technology",
    "step",
    "baby",
    "computer",
    "type",
    "attention",
    "film",
    "tree",
    "source",
    "organization",
    "hair",
    "window",
    "evidence",
    "population",
    "site",
    "garden",
    "river",
    "green",
    "small",
    "large",
    "early",
    "young",
    "important",
    "few",
    "public",
    "bad",
    "same",
    "able",
    "late",
    "hard",
    "major",
    "better",
    "economic",
    "strong",
    "possible",
    "whole",
    "free",
    "military",
    "true",
    "federal",
    "international",
    "full",
    "special",
    "easy",
    "clear",
    "recent",
    "certain",
    "personal",
    "open",
    "red",
    "difficult",
    "available",
    "likely",
    "short",
    "single",
    "medical",
    "current",
    "wrong",
    "private",
    "past",
    "foreign",
    "fine",
    "common",
    "poor",
    "natural",
    "significant",
    "similar",
    "hot",
    "dead",
    "central",
    "happy",
    "serious",
    "ready",
    "simple",
    "left",
    "physical",
    "general",
    "environmental",
    "financial",
    "blue",
    "democratic",
    "dark",
    "various",
    "entire",
    "close",
    "legal",
    "religious",
    "cold",
    "final",
    "main",
    "huge",
    "popular",
    "traditional",
    "cultural",
    "quickly",
    "slowly",
    "often",
    "never",
    "always",
    "sometimes",
    "together",
    "already",
    "almost",
    "enough",
    "perhaps",
    "probably",
    "actually",
    "really",
    "maybe",
    "walk",
    "run",
    "read",
    "write",
    "build",
    "grow",
    "learn",
    "teach",
    "speak",
    "listen",
    "carry",
    "bring",
    "hold",
    "open",
    "close",
    "follow",
    "begin",
    "keep",
    "move",
    "live",
    "believe",
    "happen",
    "provide",
    "sit",
    "stand",
    "lose",
    "pay",
    "meet",
    "include",
    "continue",
    "set",
    "change",
    "lead",
    "understand",
    "watch",
    "stop",
    "create",
    "allow",
    "add",
    "spend",
    "offer",
    "remember",
    "consider",
    "appear",
    "buy",
    "wait",
    "serve",
    "die",
    "send",
    "expect",
    "stay",
    "fall",
    "cut",
    "reach",
    "kill",
    "remain",
    "suggest",
    "raise",
    "pass",
    "sell",
    "require",
    "decide",
    "pull",
    "explain",
    "hope",
    "develop",
    "drive",
    "return",
    "break",
    "receive",
    "agree",
    "join",
    "apple",
    "bread",
    "cloud",
    "ocean",
    "mountain",
    "forest",
    "island",
    "winter",
    "summer",
    "autumn",
    "spring",
    "horse",
    "bird",
    "fish",
    "stone",
    "glass",
    "metal",
    "silver",
    "gold",
    "paper",
    "engine",
    "bridge",
    "castle",
    "village",
    "harbor",
    "market",
    "kitchen",
    "letter",
    "music",
    "dance",
    "song",
    "painting",
];

/// A small, fast, seedable generator (splitmix64): prompts depend only on their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `n` random words separated by spaces, with a full stop every few words.
pub fn words(rng: &mut Rng, n: usize) -> String {
    let mut out = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
        if i % 12 == 11 {
            out.push('.');
        }
    }
    out
}

/// Where the prompts come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Random words: `words` per request, distinct per request index. With `prefix_words`,
    /// every prompt starts with the same text of that many words (the shared system prompt).
    Generated {
        words: usize,
        prefix_words: usize,
        seed: u64,
        prefix_seed: u64,
    },
    /// Lines of a file, one prompt each, used in turn.
    Lines(Vec<String>),
}

impl Source {
    /// The prompt of request `index`.
    pub fn prompt(&self, index: u64) -> String {
        match self {
            Source::Lines(lines) => lines[(index % lines.len() as u64) as usize].clone(),
            Source::Generated {
                words: n,
                prefix_words,
                seed,
                prefix_seed,
            } => {
                let mut out = String::new();
                if *prefix_words > 0 {
                    out.push_str("You are a careful assistant. ");
                    out.push_str(&words(&mut Rng::new(*prefix_seed ^ 0x5eed), *prefix_words));
                    out.push_str("\n\n");
                }
                // Each request's own words come from its own stream of the generator, so two
                // requests differ from their first word on (up to chance collisions, far below
                // any prefix-reuse threshold).
                let mut rng = Rng::new(
                    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
                        .wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                );
                rng.next_u64();
                out.push_str(&words(&mut rng, *n));
                out
            }
        }
    }
}

/// Words needed for about `tokens` tokens, given `tokens_per_word` measured on the target.
pub fn words_for(tokens: u32, tokens_per_word: f64) -> usize {
    if tokens == 0 {
        return 0;
    }
    ((f64::from(tokens) / tokens_per_word.max(0.1)).round() as usize).max(1)
}

/// Text on which the target's tokenizer is measured.
pub fn calibration_text() -> String {
    words(&mut Rng::new(0xca11_b4a7), 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(prefix_words: usize) -> Source {
        Source::Generated {
            words: 50,
            prefix_words,
            seed: 7,
            prefix_seed: 0,
        }
    }

    #[test]
    fn prompts_are_deterministic_and_distinct_from_the_first_word() {
        let s = generated(0);
        assert_eq!(s.prompt(3), s.prompt(3));
        let first: std::collections::HashSet<_> = (0..64)
            .map(|i| s.prompt(i).split(' ').take(3).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(first.len(), 64, "every prompt starts differently");
        assert_eq!(s.prompt(0).split(' ').count(), 50);
    }

    #[test]
    fn a_shared_prefix_is_the_same_for_every_request_and_changes_with_its_seed() {
        let s = generated(100);
        let head = |p: String| p.split("\n\n").next().map(str::to_owned);
        assert_eq!(head(s.prompt(0)), head(s.prompt(9)));
        assert_ne!(s.prompt(0), s.prompt(9));
        let other = Source::Generated {
            words: 50,
            prefix_words: 100,
            seed: 7,
            prefix_seed: 1,
        };
        assert_ne!(head(s.prompt(0)), head(other.prompt(0)));
    }

    #[test]
    fn lines_are_used_in_turn_and_words_scale_with_the_measured_ratio() {
        let s = Source::Lines(vec!["a".into(), "b".into()]);
        assert_eq!([s.prompt(0), s.prompt(1), s.prompt(2)], ["a", "b", "a"]);
        assert_eq!(words_for(1000, 1.25), 800);
        assert_eq!(words_for(0, 1.0), 0);
        assert_eq!(words_for(1, 5.0), 1);
    }
}
