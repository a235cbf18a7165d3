//! Who may use the admin API: users with a role, the tenant they belong to, their
//! password hashes (argon2id) and the JWTs they log in with.
//!
//! A tenant is an organisation billed as one; every key bills the tenant of the user
//! that owns it. Nothing here knows about HTTP or the command line.

pub mod jwt;
pub mod password;
pub mod users;

pub use jwt::{Claims, JwtKeys};
pub use users::{NewUser, Role, Tenant, User, UserPatch, UserStore};
