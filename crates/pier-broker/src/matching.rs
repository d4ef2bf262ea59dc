//! Routing predicates of the topic and headers exchange types, with RabbitMQ's exact semantics.
//!
//! Topic keys are split on `.` the way RabbitMQ splits them: `""` has no words, `"a."` has the
//! words `a` and `""`, `"a..b"` has three words. `*` matches exactly one (possibly empty) word,
//! `#` matches zero or more words.

use pier_wire::{FieldTable, FieldValue};

/// Splits a topic key into words; the empty key has zero words.
pub fn topic_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether a topic binding pattern matches a routing key.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let p = topic_words(pattern);
    let k = topic_words(routing_key);
    topic_words_match(&p, &k)
}

/// Matches pre-split words; dynamic programming so that patterns with many `#` stay linear in
/// the product of the two lengths instead of backtracking exponentially.
pub fn topic_words_match(pattern: &[&str], key: &[&str]) -> bool {
    // reachable[j]: the pattern prefix processed so far can consume exactly key[..j].
    let mut reachable = vec![false; key.len() + 1];
    if let Some(first) = reachable.first_mut() {
        *first = true;
    }
    let mut next = vec![false; key.len() + 1];
    for word in pattern {
        next.fill(false);
        match *word {
            "#" => {
                let mut any = false;
                for (n, r) in next.iter_mut().zip(&reachable) {
                    any |= *r;
                    *n = any;
                }
            }
            "*" => {
                for (n, r) in next.iter_mut().skip(1).zip(&reachable) {
                    *n = *r;
                }
            }
            literal => {
                for ((n, r), k) in next.iter_mut().skip(1).zip(&reachable).zip(key) {
                    *n = *r && *k == literal;
                }
            }
        }
        std::mem::swap(&mut reachable, &mut next);
    }
    reachable.last().copied().unwrap_or(false)
}

/// How a headers-exchange binding combines its conditions (`x-match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl HeadersMatch {
    /// Reads `x-match` from binding arguments; `None` when it has a value RabbitMQ rejects.
    pub fn from_binding_args(args: &FieldTable) -> Option<HeadersMatch> {
        match args.get("x-match") {
            None => Some(HeadersMatch::All),
            Some(v) => match v.as_str()? {
                "all" => Some(HeadersMatch::All),
                "any" => Some(HeadersMatch::Any),
                "all-with-x" => Some(HeadersMatch::AllWithX),
                "any-with-x" => Some(HeadersMatch::AnyWithX),
                _ => None,
            },
        }
    }
}

/// Whether message headers satisfy a headers-exchange binding.
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = HeadersMatch::from_binding_args(binding_args).unwrap_or(HeadersMatch::All);
    let with_x = matches!(mode, HeadersMatch::AllWithX | HeadersMatch::AnyWithX);
    let all = matches!(mode, HeadersMatch::All | HeadersMatch::AllWithX);
    let mut considered = 0usize;
    let mut matched = 0usize;
    for (key, expected) in binding_args.iter() {
        if key.as_str() == "x-match" || (!with_x && key.as_str().starts_with("x-")) {
            continue;
        }
        considered += 1;
        let hit = match headers.and_then(|h| h.get(key.as_str())) {
            None => false,
            Some(actual) => matches!(expected, FieldValue::Void) || values_equal(expected, actual),
        };
        if hit {
            matched += 1;
            if !all {
                return true;
            }
        } else if all {
            return false;
        }
    }
    if all {
        matched == considered
    } else {
        false
    }
}

/// Value equality as RabbitMQ applies it in header matching: integers compare by value whatever
/// their width, strings by bytes, everything else structurally.
pub fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    if let (Some(x), Some(y)) = (int_value(a), int_value(b)) {
        return x == y;
    }
    match (string_bytes(a), string_bytes(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn int_value(v: &FieldValue) -> Option<i128> {
    Some(match v {
        FieldValue::ShortShortInt(x) => i128::from(*x),
        FieldValue::ShortShortUInt(x) => i128::from(*x),
        FieldValue::ShortInt(x) => i128::from(*x),
        FieldValue::ShortUInt(x) => i128::from(*x),
        FieldValue::LongInt(x) => i128::from(*x),
        FieldValue::LongUInt(x) => i128::from(*x),
        FieldValue::LongLongInt(x) => i128::from(*x),
        FieldValue::LongLongUInt(x) => i128::from(*x),
        _ => return None,
    })
}

fn string_bytes(v: &FieldValue) -> Option<&[u8]> {
    match v {
        FieldValue::LongString(s) => Some(s.as_bytes()),
        FieldValue::ByteArray(b) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_basics() {
        assert!(topic_matches("a.b.c", "a.b.c"));
        assert!(!topic_matches("a.b.c", "a.b"));
        assert!(topic_matches("*.b.*", "a.b.c"));
        assert!(!topic_matches("*.b.*", "a.b"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("#", ""));
        assert!(!topic_matches("*", ""));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("", "a"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(topic_matches("a.#.b", "a.b"));
        assert!(topic_matches("a.#.b", "a.x.y.b"));
        assert!(!topic_matches("a.#.b", "a.x.y.c"));
        assert!(topic_matches("#.b", "b"));
        assert!(topic_matches("#.#", ""));
        assert!(topic_matches("*.#", "a"));
        assert!(!topic_matches("*.*.#", "a"));
    }

    #[test]
    fn topic_empty_words() {
        assert!(topic_matches("a..b", "a..b"));
        assert!(topic_matches("a.*.b", "a..b"));
        assert!(!topic_matches("a.b", "a..b"));
        assert!(topic_matches("a.*", "a."));
        assert!(topic_matches("*.a", ".a"));
        assert!(topic_matches("#", "."));
        assert!(topic_matches("*.*", "."));
        assert!(!topic_matches("*", "."));
    }

    #[test]
    fn topic_many_hashes_is_fast() {
        let pattern = vec!["#"; 64].join(".") + ".z";
        let key = vec!["a"; 200].join(".");
        assert!(!topic_matches(&pattern, &key));
    }

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(*k, v.clone());
        }
        t
    }

    fn s(v: &str) -> FieldValue {
        FieldValue::LongString(v.into())
    }

    #[test]
    fn headers_all_and_any() {
        let msg = table(&[("format", s("pdf")), ("type", s("report")), ("x-k", s("v"))]);
        let all = table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]);
        assert!(headers_match(&all, Some(&msg)));
        let all_miss = table(&[("format", s("pdf")), ("type", s("log"))]);
        assert!(!headers_match(&all_miss, Some(&msg)));
        let any = table(&[
            ("x-match", s("any")),
            ("format", s("zip")),
            ("type", s("report")),
        ]);
        assert!(headers_match(&any, Some(&msg)));
        let any_miss = table(&[("x-match", s("any")), ("format", s("zip"))]);
        assert!(!headers_match(&any_miss, Some(&msg)));
        assert!(!headers_match(&any, None));
    }

    #[test]
    fn headers_x_keys() {
        let msg = table(&[("x-k", s("v"))]);
        let all_x = table(&[("x-match", s("all")), ("x-k", s("other"))]);
        assert!(
            headers_match(&all_x, Some(&msg)),
            "x- keys ignored under all"
        );
        let all_with_x = table(&[("x-match", s("all-with-x")), ("x-k", s("other"))]);
        assert!(!headers_match(&all_with_x, Some(&msg)));
        let any_with_x = table(&[("x-match", s("any-with-x")), ("x-k", s("v"))]);
        assert!(headers_match(&any_with_x, Some(&msg)));
    }

    #[test]
    fn headers_void_and_int_widths() {
        let msg = table(&[("n", FieldValue::LongLongInt(5))]);
        assert!(headers_match(
            &table(&[("n", FieldValue::Void)]),
            Some(&msg)
        ));
        assert!(headers_match(
            &table(&[("n", FieldValue::ShortInt(5))]),
            Some(&msg)
        ));
        assert!(!headers_match(
            &table(&[("n", FieldValue::ShortInt(6))]),
            Some(&msg)
        ));
    }
}
