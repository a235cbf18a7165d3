//! Identifiers. They appear in NATS subjects and SQL keys, so they are parsed once at
//! the edge and trusted afterwards.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The string was empty.
    #[error("identifier is empty")]
    Empty,
    /// The string was longer than [`MAX_ID_LEN`].
    #[error("identifier is longer than {MAX_ID_LEN} characters")]
    TooLong,
    /// The string holds a character outside `[A-Za-z0-9_-]`.
    #[error("identifier may only contain ASCII letters, digits, '_' and '-'")]
    BadCharacter,
}

/// Longest identifier accepted; keeps subjects and index keys small.
pub const MAX_ID_LEN: usize = 64;

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    // A NATS subject token must not contain '.', '*', '>' or whitespace; this stricter
    // alphabet also keeps ids safe in URLs, file names and log lines.
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an identifier (`[A-Za-z0-9_-]{1,64}`).
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate(&s)?;
                Ok(Self(s))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// An upstream account in the pool (an Anthropic API key or a Claude OAuth login).
    AccountId
);
id_type!(
    /// A tenant: the customer who is billed for usage.
    TenantId
);
id_type!(
    /// A relay-issued API key, by its public id (never the secret).
    ApiKeyId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_unsafe_ids_are_rejected() {
        assert_eq!(AccountId::parse("a.b"), Err(IdError::BadCharacter));
        assert_eq!(AccountId::parse("a*"), Err(IdError::BadCharacter));
        assert_eq!(AccountId::parse("a>"), Err(IdError::BadCharacter));
        assert_eq!(AccountId::parse("a b"), Err(IdError::BadCharacter));
        assert_eq!(AccountId::parse(""), Err(IdError::Empty));
        assert_eq!(AccountId::parse("x".repeat(65)), Err(IdError::TooLong));
        assert!(AccountId::parse("acc_01J-x").is_ok());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<TenantId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"not.ok\"").is_err());
    }
}
