//! Secrets and their hashes: passwords as argon2id hashes (PHC strings), bearer tokens as
//! random strings whose SHA-256 is kept, and the keyed digest that remembers a verified
//! password without keeping it.
//!
//! A token is `rnl_<id>_<secret>`: the id (12 hex digits) finds the stored token, the secret
//! (43 characters of URL-safe base64, 256 random bits) is what its hash is checked against.
//! Random bits come from the operating system (ring's `SystemRandom`).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};

use crate::error::RpcError;

/// The prefix of every token.
const TOKEN_PREFIX: &str = "rnl_";
/// Bytes of a token's id.
const ID_BYTES: usize = 6;
/// Bytes of a token's secret.
const SECRET_BYTES: usize = 32;

/// Fills `buf` with random bytes.
///
/// # Errors
/// `INTERNAL` if the operating system gives none.
fn random(buf: &mut [u8]) -> Result<(), RpcError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| RpcError::internal("the operating system gave no random bytes"))
}

/// The argon2id hash of `password` with a new random salt, as a PHC string. Slow by design
/// (tens of milliseconds): call it off the async threads.
///
/// # Errors
/// `INTERNAL` if no salt can be drawn or hashing fails.
pub fn hash_password(password: &str) -> Result<String, RpcError> {
    let mut salt = [0u8; 16];
    random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| RpcError::internal(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RpcError::internal(format!("password hash: {e}")))
}

/// The hash of a random password no one knows, with the same cost as any other.
///
/// # Errors
/// As [`hash_password`].
pub fn unguessable_hash() -> Result<String, RpcError> {
    let mut secret = [0u8; 32];
    random(&mut secret)?;
    hash_password(&URL_SAFE_NO_PAD.encode(secret))
}

/// Whether `password` is the one `hash` (a PHC string) was made from. Slow by design.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A new token: its id, the whole bearer string, and the hash to keep.
pub struct NewToken {
    /// The id.
    pub id: String,
    /// `rnl_<id>_<secret>`: shown once.
    pub bearer: String,
    /// The secret's SHA-256, hex.
    pub hash: String,
}

/// Draws a new token.
///
/// # Errors
/// `INTERNAL` if the operating system gives no random bytes.
pub fn new_token() -> Result<NewToken, RpcError> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    random(&mut id)?;
    random(&mut secret)?;
    let id = hex(&id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    Ok(NewToken {
        bearer: format!("{TOKEN_PREFIX}{id}_{secret}"),
        hash: sha256_hex(secret.as_bytes()),
        id,
    })
}

/// The id and secret of a bearer string, if it has a token's form.
pub fn split_token(bearer: &str) -> Option<(&str, &str)> {
    let rest = bearer.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == ID_BYTES * 2 && !secret.is_empty()).then_some((id, secret))
}

/// Whether `secret` hashes to `hash` (hex SHA-256), compared in constant time.
pub fn token_matches(secret: &str, hash: &str) -> bool {
    same(sha256_hex(secret.as_bytes()).as_bytes(), hash.as_bytes())
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A process-wide key for remembering verified passwords: the digest of a password under
/// it says "this password was verified" without keeping the password, and means nothing
/// outside this process.
pub struct Remembering {
    key: hmac::Key,
}

impl Remembering {
    /// A new random key.
    ///
    /// # Errors
    /// `INTERNAL` if the operating system gives no random bytes.
    pub fn new() -> Result<Self, RpcError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| RpcError::internal("the operating system gave no random bytes"))?;
        Ok(Remembering { key })
    }

    /// The digest of `user`'s `password`.
    pub fn digest(&self, user: &str, password: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.sign()
    }

    /// Whether `tag` is the digest of `user`'s `password`, in constant time.
    pub fn is_digest(&self, tag: &hmac::Tag, user: &str, password: &str) -> bool {
        same(self.digest(user, password).as_ref(), tag.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsf", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn tokens_split_and_match_their_hash() {
        let t = new_token().unwrap();
        let (id, secret) = split_token(&t.bearer).unwrap();
        assert_eq!(id, t.id);
        assert!(token_matches(secret, &t.hash));
        assert!(!token_matches("x", &t.hash));
        assert!(!t.hash.contains(secret));
        assert_eq!(split_token("rnl_abc_def"), None, "short id");
        assert_eq!(split_token("abc"), None);
        assert_ne!(new_token().unwrap().bearer, t.bearer);
    }

    #[test]
    fn remembered_digests_are_of_the_user_and_password() {
        let r = Remembering::new().unwrap();
        let tag = r.digest("alice", "pw");
        assert!(r.is_digest(&tag, "alice", "pw"));
        assert!(!r.is_digest(&tag, "alice", "pW"));
        assert!(!r.is_digest(&tag, "alic", "epw"));
    }
}
