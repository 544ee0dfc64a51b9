//! Password hashes. PURE apart from randomness for salts: no I/O, no async.
//!
//! New hashes are argon2id PHC strings with OWASP's recommended parameters
//! (19 MiB, 2 iterations, 1 lane; configurable). Verification also accepts
//! bcrypt (`$2a$`, `$2b$`, `$2y$`) and SHA-512-crypt (`$6$`) so accounts can be
//! imported from Dovecot or Postfix; those, and argon2 hashes whose
//! parameters are weaker than the configured ones, report `needs_upgrade`
//! so the caller rehashes at the next successful login.
//!
//! These functions are CPU-heavy (~20 ms): call them off the async threads.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

/// argon2id cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashParams {
    /// Memory cost in KiB (OWASP: 19456 = 19 MiB).
    pub memory_kib: u32,
    /// Iterations (OWASP: 2).
    pub iterations: u32,
    /// Lanes (OWASP: 1).
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        HashParams {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Why a password could not be hashed or a hash could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("unsupported or malformed password hash (expected $argon2id$, $2b$ or $6$)")]
    UnknownScheme,
    #[error("password must not be empty")]
    Empty,
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The password matches. `needs_upgrade`: rehash with [`hash`] and store it.
    Match { needs_upgrade: bool },
    /// The password does not match (or the hash is unreadable).
    Mismatch,
}

fn argon2(params: &HashParams) -> Result<Argon2<'static>, PasswordError> {
    let p = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .map_err(|e| PasswordError::Params(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
}

/// Checks that `params` are usable (called at config load).
pub fn validate_params(params: &HashParams) -> Result<(), PasswordError> {
    argon2(params).map(|_| ())
}

/// Hashes `password` into an argon2id PHC string with a random salt.
pub fn hash(password: &str, params: &HashParams) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2(params)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Params(e.to_string()))
}

/// Checks `password` against `stored` (argon2 PHC, bcrypt or SHA-512-crypt).
/// Runs in time independent of where a mismatch occurs.
pub fn verify(password: &str, stored: &str, params: &HashParams) -> Verification {
    if stored.starts_with("$argon2") {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return Verification::Mismatch;
        };
        if Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            return Verification::Mismatch;
        }
        let weaker = parsed.algorithm.as_str() != "argon2id"
            || Params::try_from(&parsed).map_or(true, |p| {
                p.m_cost() < params.memory_kib || p.t_cost() < params.iterations
            });
        Verification::Match {
            needs_upgrade: weaker,
        }
    } else if stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$")
    {
        match bcrypt::verify(password, stored) {
            Ok(true) => Verification::Match {
                needs_upgrade: true,
            },
            _ => Verification::Mismatch,
        }
    } else if stored.starts_with("$6$") {
        match sha_crypt::sha512_check(password, stored) {
            Ok(()) => Verification::Match {
                needs_upgrade: true,
            },
            Err(_) => Verification::Mismatch,
        }
    } else {
        Verification::Mismatch
    }
}

/// Checks that `stored` is a hash [`verify`] understands (for `hash-password`
/// imports and plain-SQL checks).
pub fn check_format(stored: &str) -> Result<(), PasswordError> {
    let ok = if stored.starts_with("$argon2") {
        PasswordHash::new(stored).is_ok()
    } else if stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$")
    {
        stored.len() == 60
    } else {
        stored.starts_with("$6$") && stored.matches('$').count() >= 3
    };
    if ok {
        Ok(())
    } else {
        Err(PasswordError::UnknownScheme)
    }
}

/// A hash of a random password with the configured parameters, verified
/// against for unknown users so that timing does not reveal whether a user
/// exists. Compute once at start.
pub fn dummy_hash(params: &HashParams) -> Result<String, PasswordError> {
    let random: String = {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    };
    hash(&random, params)
}

/// A random password for `user add --generate`: 24 characters, ~142 bits.
pub fn generate_password() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> HashParams {
        HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn argon2id_round_trip() {
        let h = hash("correct horse", &fast()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert_eq!(
            verify("correct horse", &h, &fast()),
            Verification::Match {
                needs_upgrade: false
            }
        );
        assert_eq!(verify("wrong horse", &h, &fast()), Verification::Mismatch);
    }

    #[test]
    fn weaker_argon2_needs_upgrade() {
        let h = hash("pw", &fast()).unwrap();
        let stronger = HashParams {
            memory_kib: 2048,
            iterations: 1,
            parallelism: 1,
        };
        assert_eq!(
            verify("pw", &h, &stronger),
            Verification::Match {
                needs_upgrade: true
            }
        );
    }

    #[test]
    fn bcrypt_imports_verify_and_need_upgrade() {
        let h = bcrypt::hash("s3cret", 4).unwrap();
        assert_eq!(
            verify("s3cret", &h, &fast()),
            Verification::Match {
                needs_upgrade: true
            }
        );
        assert_eq!(verify("S3cret", &h, &fast()), Verification::Mismatch);
        // Non-ASCII input must not panic (bcrypt < 0.19.2 did).
        assert_eq!(
            verify("s3cret", "$2b$04$\u{e9}\u{e9}", &fast()),
            Verification::Mismatch
        );
    }

    #[test]
    fn sha512_crypt_imports_verify() {
        let ours =
            sha_crypt::sha512_simple("password", &sha_crypt::Sha512Params::default()).unwrap();
        assert_eq!(
            verify("password", &ours, &fast()),
            Verification::Match {
                needs_upgrade: true
            }
        );
        assert_eq!(verify("Password", &ours, &fast()), Verification::Mismatch);
        assert!(check_format(&ours).is_ok());
    }

    #[test]
    fn garbage_hashes_never_match() {
        for h in ["", "plain", "$argon2id$broken", "$1$md5$x", "$6$"] {
            assert_eq!(verify("x", h, &fast()), Verification::Mismatch, "{h}");
        }
        assert!(check_format("plain").is_err());
    }
}
