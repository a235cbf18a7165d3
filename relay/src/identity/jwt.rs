//! Login tokens: HS256 JWTs signed with `JWT_SECRET`.
//!
//! A token names the user and the user's token epoch. The epoch is bumped when the
//! user is disabled, changes password or role, so every older token stops working at
//! once on every relay: each admin request reads the user row (the admin API is not
//! the hot path).

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// The user's token epoch when the token was issued.
    pub epoch: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// Why the signing secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Scale mode without `JWT_SECRET`.
    #[error("JWT_SECRET is required when NATS_URL is set (every relay must share it)")]
    Required,
    /// Too short to be a secret.
    #[error("JWT_SECRET must be at least 32 characters")]
    TooShort,
    /// The generated secret file could not be read or written.
    #[error("JWT secret file {path}: {source}")]
    File {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Signing and verification keys, and the lifetime of new tokens.
#[derive(Clone)]
pub struct JwtKeys {
    /// Signs.
    encoding: EncodingKey,
    /// Verifies.
    decoding: DecodingKey,
    /// Lifetime of issued tokens.
    lifetime: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(***)")
    }
}

impl JwtKeys {
    /// Keys from a secret.
    pub fn from_secret(secret: &[u8], lifetime: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            lifetime,
        }
    }

    /// `configured` if given; otherwise, in embedded mode, a secret generated once into
    /// `<data_dir>/jwt.secret` (mode 0600); in scale mode an error.
    pub fn load_or_create(
        configured: Option<&str>,
        scale_mode: bool,
        data_dir: &Path,
        lifetime: Duration,
    ) -> Result<Self, SecretError> {
        if let Some(s) = configured {
            if s.len() < 32 {
                return Err(SecretError::TooShort);
            }
            return Ok(Self::from_secret(s.as_bytes(), lifetime));
        }
        if scale_mode {
            return Err(SecretError::Required);
        }
        let path = data_dir.join("jwt.secret");
        let file_err = |source| SecretError::File {
            path: path.display().to_string(),
            source,
        };
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = crate::crypto::generate_key().expose().to_owned();
                crate::crypto::write_private(&path, &s).map_err(file_err)?;
                s
            }
            Err(e) => return Err(file_err(e)),
        };
        if secret.len() < 32 {
            return Err(SecretError::TooShort);
        }
        Ok(Self::from_secret(secret.as_bytes(), lifetime))
    }

    /// A token for `user_id` at `epoch`, and when it expires.
    pub fn issue(&self, user_id: &str, epoch: i64, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
        let exp = now + self.lifetime;
        let claims = Claims {
            sub: user_id.to_owned(),
            epoch,
            iat: now.timestamp(),
            exp: exp.timestamp(),
        };
        // HS256 with an in-memory key cannot fail to sign.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default();
        (token, exp)
    }

    /// Verifies signature, algorithm and expiry (no leeway).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_exp = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::from_secret(secret.as_bytes(), Duration::hours(24))
    }

    #[test]
    fn a_token_verifies_with_its_secret_only() {
        let (t, _) = keys("a".repeat(32).as_str()).issue("usr_1", 3, Utc::now());
        let c = keys(&"a".repeat(32)).verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.epoch), ("usr_1", 3));
        assert!(keys(&"b".repeat(32)).verify(&t).is_none());
        assert!(keys(&"a".repeat(32)).verify("garbage").is_none());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let k = keys(&"a".repeat(32));
        let (t, _) = k.issue("usr_1", 0, Utc::now() - Duration::hours(25));
        assert!(k.verify(&t).is_none());
    }

    #[test]
    fn scale_mode_requires_a_configured_secret() {
        let dir = tempfile::tempdir().unwrap();
        let e = JwtKeys::load_or_create(None, true, dir.path(), Duration::hours(1));
        assert!(matches!(e, Err(SecretError::Required)));
        assert!(matches!(
            JwtKeys::load_or_create(Some("short"), false, dir.path(), Duration::hours(1)),
            Err(SecretError::TooShort)
        ));
    }

    #[test]
    fn the_generated_secret_is_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = JwtKeys::load_or_create(None, false, dir.path(), Duration::hours(1)).unwrap();
        let b = JwtKeys::load_or_create(None, false, dir.path(), Duration::hours(1)).unwrap();
        let (t, _) = a.issue("usr_1", 0, Utc::now());
        assert!(b.verify(&t).is_some());
        let mode = std::fs::metadata(dir.path().join("jwt.secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
