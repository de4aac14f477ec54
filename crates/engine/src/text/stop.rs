//! Stop strings matched across token boundaries.
//!
//! Text that could still be the start of a stop string is held back from the
//! stream; once a stop string appears, the output ends right before it.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text safe to send now.
    pub emit: String,
    /// A stop string matched: generation ends after `emit`.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome {
                emit: std::mem::take(&mut self.held),
                stopped: false,
            };
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopOutcome {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices() {
            let tail = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
                break;
            }
        }
        let emit = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// Generation ended for another reason: release what was held back.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_across_pieces_and_holds_back() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E").emit, "abc ");
        assert_eq!(
            m.push("N"),
            StopOutcome {
                emit: String::new(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("Dxyz"),
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("E").emit, "");
        assert_eq!(m.push("x").emit, "Ex");
        assert_eq!(m.flush(), "");
    }

    proptest! {
        /// Whatever the split, the emitted text is the text up to the first stop.
        #[test]
        fn split_invariance(text in "[ab€]{0,24}", cuts in proptest::collection::vec(0usize..24, 0..6)) {
            let stops = vec!["ab€".to_string(), "bb".to_string()];
            let want = match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                Some(i) => text[..i].to_string(),
                None => text.clone(),
            };
            let chars: Vec<char> = text.chars().collect();
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < chars.len()).collect();
            bounds.push(chars.len());
            bounds.sort();
            let mut m = StopMatcher::new(stops);
            let (mut got, mut prev, mut stopped) = (String::new(), 0, false);
            for b in bounds {
                let piece: String = chars[prev..b].iter().collect();
                prev = b;
                let o = m.push(&piece);
                got.push_str(&o.emit);
                if o.stopped { stopped = true; break; }
            }
            if !stopped { got.push_str(&m.flush()); }
            prop_assert_eq!(got, want);
        }
    }
}
