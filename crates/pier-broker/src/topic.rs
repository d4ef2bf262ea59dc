//! A trie of topic binding patterns, so routing a message costs the length of its key (plus
//! the wildcard branches it meets), not the number of bindings. RabbitMQ routes topics with a
//! trie for the same reason.
//!
//! ```text
//!  "a.*.c" ─┐        root ── a ── * ── c   [q1]
//!  "a.#"   ─┼─►            └── # [q2]
//!  "#.c"   ─┘        root ── # ── c [q3]
//! ```
//!
//! Words are split the way `matching::topic_words` splits them (the empty key has no words).

use std::collections::HashMap;

use crate::exchange::Destination;
use crate::matching::topic_words;

#[derive(Debug, Clone, Default)]
pub struct TopicTrie {
    root: Node,
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Bindings whose pattern ends here (one entry per binding).
    destinations: Vec<Destination>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.destinations.is_empty()
    }
}

impl TopicTrie {
    pub fn insert(&mut self, pattern: &str, destination: Destination) {
        let mut node = &mut self.root;
        for word in topic_words(pattern) {
            node = node.children.entry(word.into()).or_default();
        }
        node.destinations.push(destination);
    }

    /// Removes one binding of `pattern` to `destination`; prunes emptied branches.
    pub fn remove(&mut self, pattern: &str, destination: &Destination) {
        fn go(node: &mut Node, words: &[&str], destination: &Destination) {
            match words.split_first() {
                None => {
                    if let Some(i) = node.destinations.iter().position(|d| d == destination) {
                        node.destinations.swap_remove(i);
                    }
                }
                Some((word, rest)) => {
                    if let Some(child) = node.children.get_mut(*word) {
                        go(child, rest, destination);
                        if child.is_empty() {
                            node.children.remove(*word);
                        }
                    }
                }
            }
        }
        go(&mut self.root, &topic_words(pattern), destination);
    }

    /// Calls `emit` for the destination of every pattern matching `routing_key` (a destination
    /// bound by several matching patterns is emitted several times; callers de-duplicate).
    pub fn route<'a>(&'a self, routing_key: &str, emit: &mut impl FnMut(&'a Destination)) {
        let words = topic_words(routing_key);
        walk(&self.root, &words, emit);
    }
}

fn walk<'a>(node: &'a Node, words: &[&str], emit: &mut impl FnMut(&'a Destination)) {
    if let Some(hash) = node.children.get("#") {
        // `#` takes zero or more words: try every split.
        for skip in 0..=words.len() {
            if let Some(rest) = words.get(skip..) {
                walk(hash, rest, emit);
            }
        }
    }
    match words.split_first() {
        None => node.destinations.iter().for_each(&mut *emit),
        Some((word, rest)) => {
            if let Some(star) = node.children.get("*") {
                walk(star, rest, emit);
            }
            // A literal `*` or `#` in a routing key is an ordinary word; its wildcard branch
            // was taken above, so only other words look up a literal child.
            if *word != "*" && *word != "#" {
                if let Some(child) = node.children.get(*word) {
                    walk(child, rest, emit);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::topic_matches;
    use pier_wire::ShortString;
    use proptest::prelude::*;

    fn q(n: &str) -> Destination {
        Destination::Queue(ShortString::from(n))
    }

    fn routed(t: &TopicTrie, key: &str) -> Vec<Destination> {
        let mut out = Vec::new();
        t.route(key, &mut |d| {
            if !out.contains(d) {
                out.push(d.clone());
            }
        });
        out.sort();
        out
    }

    #[test]
    fn wildcards_and_removal() {
        let mut t = TopicTrie::default();
        t.insert("a.*.c", q("star"));
        t.insert("a.#", q("hash"));
        t.insert("#", q("all"));
        t.insert("", q("empty"));
        assert_eq!(routed(&t, "a.b.c"), [q("all"), q("hash"), q("star")]);
        assert_eq!(routed(&t, "a"), [q("all"), q("hash")]);
        assert_eq!(routed(&t, ""), [q("all"), q("empty")]);
        t.remove("a.#", &q("hash"));
        assert_eq!(routed(&t, "a"), [q("all")]);
        t.remove("#", &q("all"));
        t.remove("a.*.c", &q("star"));
        t.remove("", &q("empty"));
        assert!(t.root.is_empty());
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new())
        ]
    }

    fn pattern_word() -> impl Strategy<Value = String> {
        prop_oneof![word(), Just("*".to_owned()), Just("#".to_owned())]
    }

    proptest! {
        /// The trie agrees with the reference matcher on every pattern and key.
        #[test]
        fn trie_agrees_with_matcher(
            patterns in prop::collection::vec(prop::collection::vec(pattern_word(), 0..5), 1..8),
            key in prop::collection::vec(word(), 0..6),
        ) {
            let key = key.join(".");
            let mut t = TopicTrie::default();
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            for (i, p) in patterns.iter().enumerate() {
                t.insert(p, q(&i.to_string()));
            }
            let mut expected: Vec<Destination> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| topic_matches(p, &key))
                .map(|(i, _)| q(&i.to_string()))
                .collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(routed(&t, &key), expected);
        }
    }
}
