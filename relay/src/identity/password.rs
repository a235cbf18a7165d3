//! Password hashing with argon2id (the crate's defaults: 19 MiB, 2 passes, 1 lane),
//! stored in PHC string form so the parameters travel with the hash.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Shortest password accepted.
pub const MIN_LEN: usize = 8;
/// Longest password accepted (argon2 would take more, but nobody types this much).
pub const MAX_LEN: usize = 256;

/// Why a password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Too short or too long.
    #[error("password must be {MIN_LEN} to {MAX_LEN} characters")]
    Length,
    /// Hashing failed (should not happen with valid parameters).
    #[error("cannot hash the password")]
    Hash,
}

/// Checks the policy and hashes. CPU-heavy (tens of ms): call from a blocking task.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let n = password.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(PasswordError::Length);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hash)
}

/// Whether `password` matches the stored PHC hash. A malformed hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_LEN * 4 {
        return false;
    }
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random password for a generated admin: 24 characters from a 62-letter alphabet
/// (about 143 bits).
pub fn generate() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..24)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsE", &h));
        assert!(!verify("correct horse", "not a hash"));
    }

    #[test]
    fn the_policy_bounds_the_length() {
        assert_eq!(hash("short"), Err(PasswordError::Length));
        assert_eq!(hash(&"x".repeat(MAX_LEN + 1)), Err(PasswordError::Length));
    }

    #[test]
    fn generated_passwords_differ_and_pass_the_policy() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }
}
