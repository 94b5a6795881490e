//! Dashboard sessions and the login's brakes, in this agent's memory.
//!
//! A login gives a session cookie (`bramble_session`: HttpOnly, Secure, SameSite=Strict)
//! and a CSRF token the page sends back as `X-CSRF-Token` on every action. Sessions
//! belong to the node that made them (the page talks to the node it came from); a
//! restarted agent forgets them and the page asks for the password again. They end after
//! [`IDLE_LIMIT`] unused or [`ABSOLUTE_LIMIT`] in all, at logout, and when the password
//! changes. Only the SHA-256 of a session id is kept.
//!
//! Logins are slowed three ways, since each guess costs an argon2 run: one verification
//! at a time on this node, at most [`FAILURES_PER_ADDRESS`] failures a minute from one
//! address and [`FAILURES_PER_NODE`] from all, beyond which the answer is 429 with
//! `Retry-After` before any hashing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};

use crate::ApiError;

pub const COOKIE_NAME: &str = "bramble_session";
/// A session unused this long ends.
pub const IDLE_LIMIT: Duration = Duration::from_secs(2 * 3600);
/// A session ends this long after its login, used or not.
pub const ABSOLUTE_LIMIT: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; a new login beyond ends the least recently used.
const MAX_SESSIONS: usize = 64;
/// The window failures are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
pub const FAILURES_PER_ADDRESS: usize = 5;
pub const FAILURES_PER_NODE: usize = 30;
/// Addresses whose failures are remembered at once (a flood from many addresses then
/// meets the node-wide limit).
const MAX_ADDRESSES: usize = 1024;

struct Session {
    csrf: String,
    password_version: u64,
    created: Instant,
    last_seen: Instant,
}

/// What a valid session cookie stands for.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// The SHA-256 of the session id, hex: how logout names it.
    pub key: String,
    pub csrf: String,
}

/// A new session: what goes in the cookie and what the page keeps.
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<Failures>,
}

#[derive(Default)]
struct Failures {
    by_address: HashMap<IpAddr, Vec<Instant>>,
    all: Vec<Instant>,
}

fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ApiError::Internal("the system's random source failed".into()))?;
    Ok(hex::encode(bytes))
}

fn key_of(id: &str) -> String {
    hex::encode(digest(&SHA256, id.as_bytes()))
}

impl Sessions {
    /// Starts a session for a login checked against the password of `password_version`.
    pub fn open(&self, password_version: u64) -> Result<NewSession, ApiError> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        sessions.retain(|_, session| alive(session, now));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.last_seen)
                .map(|(key, _)| key.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            key_of(&id),
            Session {
                csrf: csrf.clone(),
                password_version,
                created: now,
                last_seen: now,
            },
        );
        Ok(NewSession { id, csrf })
    }

    /// The session a cookie value names, if it is still valid under the password of
    /// `password_version`.
    pub fn find(&self, id: &str, password_version: u64) -> Option<SessionView> {
        if id.len() != 64 {
            return None;
        }
        let key = key_of(id);
        let now = Instant::now();
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let session = sessions.get_mut(&key)?;
        if !alive(session, now) || session.password_version != password_version {
            sessions.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(SessionView {
            key,
            csrf: session.csrf.clone(),
        })
    }

    pub fn close(&self, key: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(key);
    }

    pub fn count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }

    /// Refuses a login attempt from `address` before any hashing if it or the node has
    /// failed too often in the last minute; the error says when to try again.
    pub fn admit_attempt(&self, address: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        failures.forget_before(now);
        let retry_after = |times: &[Instant]| {
            times
                .first()
                .map(|first| FAILURE_WINDOW.saturating_sub(now.duration_since(*first)))
                .unwrap_or(FAILURE_WINDOW)
                .as_secs()
                .max(1)
        };
        if let Some(times) = failures.by_address.get(&address)
            && times.len() >= FAILURES_PER_ADDRESS
        {
            return Err(ApiError::TooManyAttempts {
                retry_after_seconds: retry_after(times),
            });
        }
        if failures.all.len() >= FAILURES_PER_NODE {
            return Err(ApiError::TooManyAttempts {
                retry_after_seconds: retry_after(&failures.all),
            });
        }
        Ok(())
    }

    pub fn record_failure(&self, address: IpAddr) {
        let now = Instant::now();
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        failures.forget_before(now);
        if failures.by_address.len() >= MAX_ADDRESSES && !failures.by_address.contains_key(&address)
        {
            // The node-wide count still holds the line.
            failures.by_address.clear();
        }
        failures.by_address.entry(address).or_default().push(now);
        failures.all.push(now);
    }
}

impl Failures {
    fn forget_before(&mut self, now: Instant) {
        let recent = |time: &Instant| now.duration_since(*time) < FAILURE_WINDOW;
        self.all.retain(recent);
        self.by_address.retain(|_, times| {
            times.retain(recent);
            !times.is_empty()
        });
    }
}

fn alive(session: &Session, now: Instant) -> bool {
    now.duration_since(session.last_seen) < IDLE_LIMIT
        && now.duration_since(session.created) < ABSOLUTE_LIMIT
}

/// The `Set-Cookie` value for a new session.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE_NAME}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        ABSOLUTE_LIMIT.as_secs()
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn expired_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_find_and_close() {
        let sessions = Sessions::default();
        let session = sessions.open(7).expect("open");
        let found = sessions.find(&session.id, 7).expect("valid");
        assert_eq!(found.csrf, session.csrf);
        assert!(
            sessions.find(&session.id, 8).is_none(),
            "a new password ends it"
        );
        assert!(
            sessions.find(&session.id, 7).is_none(),
            "and it stays ended"
        );
        let other = sessions.open(7).expect("open");
        let view = sessions.find(&other.id, 7).expect("valid");
        sessions.close(&view.key);
        assert!(sessions.find(&other.id, 7).is_none());
        assert!(sessions.find("short", 7).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open(1).expect("open");
        for _ in 0..MAX_SESSIONS {
            sessions.open(1).expect("open");
        }
        assert_eq!(sessions.count(), MAX_SESSIONS);
        assert!(sessions.find(&first.id, 1).is_none(), "the oldest went");
    }

    #[test]
    fn failures_slow_an_address_then_the_node() {
        let sessions = Sessions::default();
        let address: IpAddr = "192.0.2.1".parse().expect("address");
        for _ in 0..FAILURES_PER_ADDRESS {
            sessions.admit_attempt(address).expect("admitted");
            sessions.record_failure(address);
        }
        let refused = sessions.admit_attempt(address).expect_err("refused");
        assert!(
            matches!(refused, ApiError::TooManyAttempts { retry_after_seconds } if (1..=60).contains(&retry_after_seconds))
        );
        let another: IpAddr = "192.0.2.2".parse().expect("address");
        sessions.admit_attempt(another).expect("others still may");
        for index in 0..FAILURES_PER_NODE {
            sessions.record_failure(IpAddr::from([198, 51, 100, (index % 250) as u8]));
        }
        assert!(
            sessions.admit_attempt(another).is_err(),
            "the node-wide limit"
        );
    }

    #[test]
    fn cookies_carry_their_flags_and_parse_back() {
        let cookie = session_cookie("abc");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(flag), "{cookie}");
        }
        assert_eq!(cookie_value("a=1; bramble_session=xyz; b=2"), Some("xyz"));
        assert_eq!(cookie_value("a=1"), None);
    }
}
