//! Secrets at rest and in memory.
//!
//! Upstream credentials are sealed with AES-256-GCM under a key from `ENCRYPTION_KEY`
//! or, when unset, a key generated once into `<DATA_DIR>/encryption.key` (mode 0600).
//! Tenant keys are never stored: only their SHA-256 (they are 256-bit random strings, so
//! a fast hash is enough and keeps the auth lookup cheap).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// A secret string whose `Debug` and `Display` never reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it is sent or sealed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Errors sealing or opening secrets.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// `ENCRYPTION_KEY` or the key file is not 64 hex characters.
    #[error("encryption key must be 64 hex characters (32 bytes)")]
    BadKey,
    /// The key file could not be read or written.
    #[error("encryption key file {path}: {source}")]
    KeyFile {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A sealed value is malformed or was sealed under another key.
    #[error("cannot decrypt credential (wrong ENCRYPTION_KEY or corrupt value)")]
    Open,
}

/// Seals and opens upstream credentials.
#[derive(Clone)]
pub struct Cipher {
    /// The AES-256-GCM instance holding the key.
    aead: Aes256Gcm,
    /// Keyed hashing of tenant keys, with a key derived from the same secret.
    hasher: KeyHasher,
}

/// Hashes tenant keys for storage: HMAC-SHA-256 under a server secret, so a copy of
/// the database alone cannot be used to test guesses. Stored as `h1:<hex>`; keys
/// stored before (plain SHA-256 hex) still verify and are re-hashed on first use.
#[derive(Clone)]
pub struct KeyHasher {
    /// The HMAC key.
    key: [u8; 32],
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(***)")
    }
}

/// HMAC-SHA-256 (RFC 2104). A key longer than one block is hashed first.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let hashed: [u8; 32];
    let key = if key.len() > 64 {
        hashed = Sha256::digest(key).into();
        &hashed[..]
    } else {
        key
    };
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, b) in key.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Prefix of keyed key hashes.
pub const KEYED_HASH_PREFIX: &str = "h1:";

impl KeyHasher {
    /// A hasher whose key is derived from `secret` (the encryption key's bytes).
    pub fn derive(secret: &[u8]) -> Self {
        let key: [u8; 32] = Sha256::new()
            .chain_update(b"relay/tenant-key-hash/v1")
            .chain_update(secret)
            .finalize()
            .into();
        Self { key }
    }

    /// The stored form of a tenant key.
    pub fn hash(&self, key: &str) -> String {
        format!(
            "{KEYED_HASH_PREFIX}{}",
            hex::encode(hmac_sha256(&self.key, key.as_bytes()))
        )
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(***)")
    }
}

const SEALED_PREFIX: &str = "v1:";

impl Cipher {
    /// Builds a cipher from 64 hex characters.
    pub fn from_hex(hex_key: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError::BadKey)?;
        let aead = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            aead,
            hasher: KeyHasher::derive(&bytes),
        })
    }

    /// The keyed hasher for tenant keys.
    pub fn key_hasher(&self) -> KeyHasher {
        self.hasher.clone()
    }

    /// Uses `configured` if given, else the key file in `data_dir`, generating it once.
    pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> Result<Self, CryptoError> {
        if let Some(k) = configured {
            return Self::from_hex(k);
        }
        let path = data_dir.join("encryption.key");
        let io_err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_hex(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let text = hex::encode(key);
                write_private(&path, &text).map_err(io_err)?;
                Self::from_hex(&text)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Encrypts a secret into `v1:<base64(nonce ‖ ciphertext)>`.
    pub fn seal(&self, plain: &Secret) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a fresh nonce and a valid key cannot fail for inputs of this
        // size; an empty result would be caught by `open` on the way back.
        let ct = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), plain.expose().as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    /// Decrypts a value produced by [`Cipher::seal`].
    pub fn open(&self, sealed: &str) -> Result<Secret, CryptoError> {
        let b64 = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(CryptoError::Open)?;
        let raw = STANDARD.decode(b64).map_err(|_| CryptoError::Open)?;
        if raw.len() < 12 + 16 {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| CryptoError::Open)
    }
}

pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Prefix of every relay-issued key.
pub const KEY_PREFIX: &str = "sk-relay-";

/// Generates a new tenant key: the prefix plus 256 random bits, base64url.
pub fn generate_key() -> Secret {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    Secret(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// The form tenant keys were stored in before keyed hashing: lowercase hex SHA-256.
/// Only read, to verify and re-hash such keys.
pub fn legacy_hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The last four characters of a key, shown after its prefix.
pub fn key_last4(key: &str) -> String {
    let n = key.chars().count();
    key.chars().skip(n.saturating_sub(4)).collect()
}

/// The displayable start of a key (at most 12 characters), for listings and audit.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_hashes_keys_longer_than_a_block_first() {
        // RFC 4231, test case 6 (webhook and Feishu signing keys can be long).
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sealed_credentials_open_with_the_same_key_only() {
        let a = Cipher::from_hex(&"11".repeat(32)).unwrap();
        let b = Cipher::from_hex(&"22".repeat(32)).unwrap();
        let sealed = a.seal(&Secret::new("sk-ant-api03-secret"));
        assert!(!sealed.contains("secret"));
        assert_eq!(a.open(&sealed).unwrap().expose(), "sk-ant-api03-secret");
        assert!(b.open(&sealed).is_err());
        assert!(a.open("v1:garbage").is_err());
    }

    #[test]
    fn key_file_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cipher::load_or_create(None, dir.path()).unwrap();
        let sealed = a.seal(&Secret::new("x"));
        let b = Cipher::load_or_create(None, dir.path()).unwrap();
        assert_eq!(b.open(&sealed).unwrap().expose(), "x");
        assert!(Cipher::from_hex("abc").is_err());
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let a = KeyHasher::derive(&[1; 32]);
        let b = KeyHasher::derive(&[2; 32]);
        assert!(a.hash("sk-relay-x").starts_with(KEYED_HASH_PREFIX));
        assert_ne!(a.hash("sk-relay-x"), b.hash("sk-relay-x"));
        assert_eq!(a.hash("sk-relay-x"), a.hash("sk-relay-x"));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        assert_eq!(format!("{:?}", Secret::new("sk-1")), "Secret(***)");
        let k = generate_key();
        assert!(k.expose().starts_with(KEY_PREFIX));
        assert_eq!(legacy_hash_key(k.expose()).len(), 64);
    }
}
