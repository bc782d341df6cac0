//! The Redis keys and channels of the engine, all under one configurable prefix so several
//! deployments can share a Redis.
//!
//! Per user (every key carries the user's id as a Redis Cluster hash tag, `{…}`, so all of a
//! user's keys hash to one slot and the publish script may touch them together):
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `P:{U}:meta` | hash | `e` the epoch, `s` the last seq |
//! | `P:{U}:history` | stream | the numbered events, entry id `<seq>-0` |
//! | `P:{U}:runs` | hash | the user's live runs: run id → owning node, thread, run fields |
//! | `P:{U}:lost` | hash | runs ended with `node_lost` (their late events are dropped) |
//! | `P:{U}:batch:N` | hash | node N's last batch for the user (makes a retried batch apply once) |
//! | `P:{U}:events` | channel | the user's numbered events |
//!
//! Per node: `P:node:N:lease` (string with a TTL: the node is alive), `P:node:N:runs` (set of
//! the node's live runs, `<len>:<user><run id>`), `P:node:N:control` (channel of stop
//! requests), and one set `P:nodes` of every node that holds a lease.
//!
//! A user id may hold any character but control characters. In keys it is written as is
//! except `%`, `{` and `}`, which become `%25`, `%7B` and `%7D`: the hash tag then always
//! ends where the key's own `}` is, and two different ids never give the same key.

use crate::ids::UserId;

/// The longest prefix accepted, in bytes.
pub(crate) const MAX_PREFIX_BYTES: usize = 64;
/// The longest node id accepted, in bytes.
pub(crate) const MAX_NODE_ID_BYTES: usize = 64;

/// The key layout of one deployment (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// Why a prefix or node id was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// Empty, longer than [`MAX_PREFIX_BYTES`], or holding a brace, whitespace or a control
    /// character (a brace would move every key's hash tag).
    Prefix,
    /// Empty, longer than [`MAX_NODE_ID_BYTES`], or holding other than ASCII letters,
    /// digits, `-`, `_` and `.`.
    NodeId,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Prefix => write!(
                f,
                "the Redis prefix must be 1 to {MAX_PREFIX_BYTES} bytes without braces, \
                 whitespace or control characters"
            ),
            KeyError::NodeId => write!(
                f,
                "a node id must be 1 to {MAX_NODE_ID_BYTES} ASCII letters, digits, '-', '_' or '.'"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// Checks a node id: it appears in keys and channel names unescaped.
pub(crate) fn validate_node_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NODE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::NodeId)
    }
}

/// The keys of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserKeys {
    pub meta: String,
    pub history: String,
    pub runs: String,
    pub lost: String,
    pub events: String,
    /// `P:{U}`, which the per-node batch key extends.
    base: String,
}

impl UserKeys {
    /// Node `node`'s record of its last batch for this user.
    pub(crate) fn batch(&self, node: &str) -> String {
        format!("{}:batch:{node}", self.base)
    }
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Result<Self, KeyError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_BYTES
            && !prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control());
        if ok {
            Ok(Keys {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(KeyError::Prefix)
        }
    }

    pub(crate) fn user(&self, user: &UserId) -> UserKeys {
        let mut base = String::with_capacity(self.prefix.len() + user.as_str().len() + 4);
        base.push_str(&self.prefix);
        base.push_str(":{");
        escape_into(&mut base, user.as_str());
        base.push('}');
        UserKeys {
            meta: format!("{base}:meta"),
            history: format!("{base}:history"),
            runs: format!("{base}:runs"),
            lost: format!("{base}:lost"),
            events: format!("{base}:events"),
            base,
        }
    }

    /// The user whose events channel `channel` is, if it is one of this prefix's.
    #[cfg(test)]
    pub(crate) fn user_of_events_channel(&self, channel: &[u8]) -> Option<UserId> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let inner = rest.strip_prefix(b":{")?.strip_suffix(b"}:events")?;
        UserId::new(unescape(std::str::from_utf8(inner).ok()?)?).ok()
    }

    /// The set of every node that holds a lease.
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    pub(crate) fn lease(&self, node: &str) -> String {
        format!("{}:node:{node}:lease", self.prefix)
    }

    pub(crate) fn node_runs(&self, node: &str) -> String {
        format!("{}:node:{node}:runs", self.prefix)
    }

    pub(crate) fn control(&self, node: &str) -> String {
        format!("{}:node:{node}:control", self.prefix)
    }
}

fn escape_into(out: &mut String, id: &str) {
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['%', '{', '}']) {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        out.push(match escape {
            "%25" => '%',
            "%7B" => '{',
            "%7D" => '}',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The hash tag Redis Cluster hashes: between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = open + key[open..].find('}').expect("a closed tag");
        &key[open + 1..close]
    }

    #[test]
    fn a_users_keys_share_one_hash_tag() {
        let keys = Keys::new("agentwire").unwrap();
        let user = UserId::new("al{ic}e %7B").unwrap();
        let k = keys.user(&user);
        let tag = hash_tag(&k.meta);
        assert_eq!(tag, "al%7Bic%7De %257B");
        for key in [&k.history, &k.runs, &k.lost, &k.events, &k.batch("n1")] {
            assert_eq!(hash_tag(key), tag, "{key}");
        }
        assert_eq!(k.meta, "agentwire:{al%7Bic%7De %257B}:meta");
    }

    #[test]
    fn prefixes_and_node_ids_are_checked() {
        assert!(Keys::new("aw-prod.eu:1").is_ok());
        for bad in ["", "a{b", "a}b", "a b", "a\nb", &"x".repeat(65)] {
            assert_eq!(Keys::new(bad).unwrap_err(), KeyError::Prefix, "{bad:?}");
        }
        assert!(validate_node_id("node_0f3a.eu-1").is_ok());
        for bad in ["", "a:b", "a{b", "é", &"x".repeat(65)] {
            assert_eq!(validate_node_id(bad), Err(KeyError::NodeId), "{bad:?}");
        }
    }

    #[test]
    fn foreign_channels_are_not_users() {
        let keys = Keys::new("aw").unwrap();
        assert_eq!(keys.user_of_events_channel(b"other:{alice}:events"), None);
        assert_eq!(keys.user_of_events_channel(b"aw:{alice}:meta"), None);
        assert_eq!(keys.user_of_events_channel(b"aw:{al%7Xce}:events"), None);
        assert_eq!(keys.user_of_events_channel(b"aw:{al{ice}:events"), None);
        assert_eq!(keys.user_of_events_channel(b"aw:{}:events"), None);
        assert_eq!(keys.user_of_events_channel(b"aw:node:n1:control"), None);
    }

    proptest! {
        /// Any valid user id gets keys of its own, and its channel names it back.
        #[test]
        fn keys_are_injective_and_channels_round_trip(a in "\\PC{1,40}", b in "[%{}a]{1,6}") {
            let keys = Keys::new("aw").unwrap();
            for id in [&a, &b] {
                let user = UserId::new(id).unwrap();
                let k = keys.user(&user);
                prop_assert_eq!(keys.user_of_events_channel(k.events.as_bytes()), Some(user));
            }
            if a != b {
                let (ka, kb) = (keys.user(&UserId::new(&a).unwrap()), keys.user(&UserId::new(&b).unwrap()));
                prop_assert_ne!(hash_tag(&ka.meta), hash_tag(&kb.meta));
            }
        }
    }
}
