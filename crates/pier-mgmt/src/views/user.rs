//! `/api/users[/{user}]` (and the users of a definitions export).

use serde::Serialize;

use super::EmptyObject;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct User {
    pub name: String,
    pub password_hash: String,
    pub hashing_algorithm: &'static str,
    pub tags: Vec<String>,
    /// User limits: Pier has none.
    pub limits: EmptyObject,
}
