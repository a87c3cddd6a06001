//! Turning generated token pieces into streamed text: UTF-8 reassembly and stop sequences.
//!
//! A token's piece can end in the middle of a multi-byte character, and a stop sequence can
//! span several tokens. [`TextStreamer`] releases text only once it is valid UTF-8 and can no
//! longer turn out to be the start of a stop sequence, so the client never sees a stop string or
//! half a character.

/// What pushing a piece produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Text that is safe to send now (possibly empty).
    Text(String),
    /// A stop sequence matched: the text before it, after which generation must end.
    Stopped(String),
}

/// Accumulates token pieces and releases text that is final.
#[derive(Debug, Default)]
pub struct TextStreamer {
    stops: Vec<String>,
    /// Bytes that do not yet form a complete UTF-8 character.
    partial: Vec<u8>,
    /// Decoded text held back because its tail could begin a stop sequence.
    held: String,
}

impl TextStreamer {
    /// A streamer that ends at the first occurrence of any of `stops`. Empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            partial: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds the bytes of one token piece.
    pub fn push(&mut self, piece: &[u8]) -> Pushed {
        self.partial.extend_from_slice(piece);
        self.decode_partial();

        if let Some(at) = self.earliest_stop() {
            let before = self.held[..at].to_owned();
            self.held.clear();
            self.partial.clear();
            return Pushed::Stopped(before);
        }

        let keep = self.stop_prefix_suffix_len();
        let release = self.held.len() - keep;
        let out = self.held[..release].to_owned();
        self.held.drain(..release);
        Pushed::Text(out)
    }

    /// Everything still held back, for when generation ends for another reason. Incomplete UTF-8
    /// at the very end is replaced with U+FFFD rather than dropped.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        out
    }

    /// Moves the longest valid UTF-8 prefix of `partial` into `held`. An invalid byte sequence
    /// (as opposed to an incomplete one at the end) becomes U+FFFD.
    fn decode_partial(&mut self) {
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.partial.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid` bytes are valid UTF-8, so this copies them unchanged.
                    self.held
                        .push_str(&String::from_utf8_lossy(&self.partial[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.partial.drain(..valid + bad);
                        }
                        None => {
                            // An incomplete character at the end: wait for more bytes.
                            self.partial.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn earliest_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop sequence.
    fn stop_prefix_suffix_len(&self) -> usize {
        let mut best = 0;
        for (i, _) in self.held.char_indices() {
            let suffix = &self.held[i..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            {
                best = suffix.len();
                break;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, Option<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStreamer::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            match s.push(p) {
                Pushed::Text(t) => out.push(t),
                Pushed::Stopped(t) => return (out, Some(t), String::new()),
            }
        }
        let rest = s.finish();
        (out, None, rest)
    }

    #[test]
    fn plain_text_passes_through() {
        let (out, stop, rest) = run(&[], &[b"Once", b" upon", b" a time"]);
        assert_eq!(out, ["Once", " upon", " a time"]);
        assert_eq!(stop, None);
        assert_eq!(rest, "");
    }

    #[test]
    fn split_multibyte_character_is_held_until_complete() {
        let euro = "€".as_bytes(); // 3 bytes
        let (out, _, rest) = run(&[], &[b"a", &euro[..1], &euro[1..2], &euro[2..], b"b"]);
        assert_eq!(out, ["a", "", "", "€", "b"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (out, _, _) = run(&[], &[b"a\xffb"]);
        assert_eq!(out, ["a\u{fffd}b"]);
    }

    #[test]
    fn incomplete_tail_is_flushed_lossily_on_finish() {
        let (out, _, rest) = run(&[], &[b"x", &"€".as_bytes()[..2]]);
        assert_eq!(out, ["x", ""]);
        assert_eq!(rest, "\u{fffd}");
    }

    #[test]
    fn stop_sequence_inside_one_piece() {
        let (out, stop, _) = run(&["END"], &[b"hello END world"]);
        assert!(out.is_empty());
        assert_eq!(stop.as_deref(), Some("hello "));
    }

    #[test]
    fn stop_sequence_across_pieces_is_never_leaked() {
        let (out, stop, _) = run(&["\n\n"], &[b"line one\n", b"\nline two"]);
        assert_eq!(out, ["line one"]);
        assert_eq!(stop.as_deref(), Some(""));
    }

    #[test]
    fn held_prefix_is_released_when_it_stops_matching() {
        let (out, stop, rest) = run(&["STOP"], &[b"ST", b"ART", b" ok"]);
        assert_eq!(out, ["", "START", " ok"]);
        assert_eq!(stop, None);
        assert_eq!(rest, "");
    }

    #[test]
    fn held_prefix_is_flushed_on_finish() {
        let (out, stop, rest) = run(&["STOP"], &[b"abc ST"]);
        assert_eq!(out, ["abc "]);
        assert_eq!(stop, None);
        assert_eq!(rest, "ST");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (_, stop, _) = run(&["zz", "b"], &[b"a b zz"]);
        assert_eq!(stop.as_deref(), Some("a "));
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let (out, stop, _) = run(&[""], &[b"abc"]);
        assert_eq!(out, ["abc"]);
        assert_eq!(stop, None);
    }

    #[test]
    fn multibyte_stop_sequence() {
        let (out, stop, _) = run(&["→"], &[b"x ", &"→".as_bytes()[..1], &"→".as_bytes()[1..]]);
        assert_eq!(out, ["x ", ""]);
        assert_eq!(stop.as_deref(), Some(""));
    }
}
