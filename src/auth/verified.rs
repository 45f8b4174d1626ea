//! Tokens verified recently. The same token is presented again and again: the anon key by every
//! anonymous client at each connect, a user's token at each reconnect and join. Found here, it is
//! not decoded, its signature not checked and its claims not parsed again: its expiry is checked
//! against the clock, which is all about a verified token that can change while the gateway runs.
//!
//! Only tokens signed with the shared secret are kept: the secret cannot change while the gateway
//! runs, where a key set can drop a key. A token is found by the digest of its text with
//! whitespace removed and escapes decoded (so that spellings of one token are one entry), nothing
//! that failed is kept, and at most [`MAX_VERIFIED`] are: when full, the expired ones go, and all
//! of them if none had expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Claims, Error, TokenDigest};

/// Most tokens kept.
pub(super) const MAX_VERIFIED: usize = 4096;

/// Verified tokens, by digest.
#[derive(Debug, Default)]
pub(super) struct Verified {
    tokens: Mutex<HashMap<TokenDigest, Arc<Claims>>>,
}

impl Verified {
    fn tokens(&self) -> MutexGuard<'_, HashMap<TokenDigest, Arc<Claims>>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The claims of the token of `digest`, if it was verified before: an error if it has expired
    /// since (it is then forgotten).
    pub(super) fn get(&self, digest: &TokenDigest, now: i64) -> Option<Result<Arc<Claims>, Error>> {
        let mut tokens = self.tokens();
        let claims = tokens.get(digest)?;
        if claims.exp <= now {
            let ago = u64::try_from(now - claims.exp).unwrap_or(0);
            tokens.remove(digest);
            return Some(Err(Error::Expired(ago)));
        }
        Some(Ok(Arc::clone(claims)))
    }

    /// Keeps the claims of a token just verified.
    pub(super) fn insert(&self, digest: TokenDigest, claims: Arc<Claims>, now: i64) {
        let mut tokens = self.tokens();
        if tokens.len() >= MAX_VERIFIED && !tokens.contains_key(&digest) {
            tokens.retain(|_, c| c.exp > now);
            if tokens.len() >= MAX_VERIFIED {
                tokens.clear();
            }
        }
        tokens.insert(digest, claims);
    }

    /// How many tokens are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.tokens().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Arc<Claims> {
        Arc::new(Claims::new("anon", exp, None, Default::default()))
    }

    #[test]
    fn a_kept_token_is_refused_once_it_expires_and_then_forgotten() {
        let verified = Verified::default();
        let digest = TokenDigest::of("a");
        assert!(verified.get(&digest, 10).is_none());
        verified.insert(digest, claims(100), 10);
        let found = verified.get(&digest, 99).expect("kept").expect("valid");
        assert_eq!(found.exp, 100);
        assert_eq!(verified.get(&digest, 105), Some(Err(Error::Expired(5))));
        assert!(
            verified.get(&digest, 99).is_none(),
            "forgotten once expired"
        );
        assert!(verified.get(&TokenDigest::of("b"), 10).is_none());
    }

    #[test]
    fn the_kept_tokens_are_bounded() {
        let verified = Verified::default();
        // Half of them expired by the time the map is full: only those go.
        for i in 0..MAX_VERIFIED {
            let exp = if i % 2 == 0 { 50 } else { 200 };
            verified.insert(TokenDigest::of(&i.to_string()), claims(exp), 10);
        }
        assert_eq!(verified.len(), MAX_VERIFIED);
        verified.insert(TokenDigest::of("new"), claims(200), 100);
        assert_eq!(verified.len(), MAX_VERIFIED / 2 + 1);
        assert!(verified.get(&TokenDigest::of("1"), 100).is_some());
        assert!(verified.get(&TokenDigest::of("0"), 100).is_none());
        // None expired: a token kept already is kept again without dropping anything; a new
        // one drops them all and is kept alone.
        let verified = Verified::default();
        for i in 0..MAX_VERIFIED {
            verified.insert(TokenDigest::of(&i.to_string()), claims(300), 100);
        }
        verified.insert(TokenDigest::of("7"), claims(300), 100);
        assert_eq!(verified.len(), MAX_VERIFIED);
        verified.insert(TokenDigest::of("last"), claims(300), 100);
        assert_eq!(verified.len(), 1);
        assert!(verified.get(&TokenDigest::of("last"), 100).is_some());
    }
}
