//! Confirmation tokens for changes over an org's retarget cap. Pure: no IO, no clock (the caller passes
//! the time).
//!
//! A dry run of a change whose impact exceeds the cap answers a token: an HMAC-SHA256, under a secret every
//! process shares, of the org, the change (its canonical description, [`Confirmable::change`]), the
//! impact's digest (how many devices' targets change, and the transitions by old and new target) and an
//! expiry a few minutes ahead. The real request recomputes the impact in its own transaction and is
//! accepted only if the token signs that same change and impact and has not expired: a change whose impact
//! grew, shrank or moved since the dry run is refused again. Nothing is stored per token.
//!
//! A token reads `<expiry, unix seconds>.<MAC, base64url>`. It is a short-lived, single-purpose
//! confirmation, not a credential: it authorises nothing the caller's key does not already allow.

use std::collections::BTreeMap;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// How long a dry run's token confirms its change.
pub const TOKEN_LIFETIME_SECONDS: i64 = 300;

/// Longest token read; anything longer is not one cohort issued.
pub const MAX_TOKEN_BYTES: usize = 128;

/// The bytes of the secret tokens are signed with.
pub const SECRET_BYTES: usize = 32;

/// The secret every process signs and checks tokens with. Never printed.
#[derive(Clone)]
pub struct Secret([u8; SECRET_BYTES]);

impl Secret {
    /// A secret from its bytes; `None` unless there are exactly [`SECRET_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// What a token confirms: a change of an org and the impact a dry run showed for it.
#[derive(Clone, Copy, Debug)]
pub struct Confirmable<'a> {
    pub org_id: &'a str,
    /// The change, canonically: e.g. `release group <id> 2.0.0`, `withdraw <release id>`,
    /// `delete group <id>`. Two requests that make the same change describe it alike.
    pub change: &'a str,
    /// Devices whose resolved target version changes.
    pub changed: usize,
    /// Those devices by old and new target (`"1 -> 2"`).
    pub transitions: &'a BTreeMap<String, usize>,
}

/// Why a token does not confirm a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unconfirmed {
    /// No token came with the change.
    #[error("no confirmation token")]
    Missing,
    /// It signs this change and impact, but its time is up.
    #[error("the confirmation token has expired")]
    Expired,
    /// It is not a token, or not one for this change with this impact: the impact changed since the dry
    /// run, it was issued for another change, or it was not issued by cohort.
    #[error("the confirmation token does not confirm this change with its current impact")]
    Mismatch,
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key` (at most one block, as [`Secret`] is).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.into()
}

/// The signed message: every field length-prefixed, so no two different confirmables (or expiries) share
/// one.
fn message(what: &Confirmable<'_>, expires_at: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(b"cohort retarget confirmation v1");
    field(what.org_id.as_bytes());
    field(what.change.as_bytes());
    field(&(what.changed as u64).to_be_bytes());
    field(&(what.transitions.len() as u64).to_be_bytes());
    for (transition, n) in what.transitions {
        field(transition.as_bytes());
        field(&(*n as u64).to_be_bytes());
    }
    field(&expires_at.to_be_bytes());
    out
}

/// A token confirming `what` until `expires_at` (unix seconds).
pub fn mint(secret: &Secret, what: &Confirmable<'_>, expires_at: i64) -> String {
    let mac = hmac_sha256(&secret.0, &message(what, expires_at));
    let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac);
    format!("{expires_at}.{mac}")
}

/// Whether `token` confirms `what` at `now` (unix seconds). The signature is checked first (in constant
/// time), so only a token cohort issued for this very change and impact can be told expired.
pub fn check(
    secret: &Secret,
    what: &Confirmable<'_>,
    token: &str,
    now: i64,
) -> Result<(), Unconfirmed> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Unconfirmed::Mismatch);
    }
    let (expiry, mac) = token.split_once('.').ok_or(Unconfirmed::Mismatch)?;
    // Digits only: `+5` or `05` would name the same expiry in another spelling.
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) || expiry.starts_with('0') {
        return Err(Unconfirmed::Mismatch);
    }
    let expires_at: i64 = expiry.parse().map_err(|_| Unconfirmed::Mismatch)?;
    let given = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| Unconfirmed::Mismatch)?;
    let expected = hmac_sha256(&secret.0, &message(what, expires_at));
    if !bool::from(given.as_slice().ct_eq(expected.as_slice())) {
        return Err(Unconfirmed::Mismatch);
    }
    if now >= expires_at {
        return Err(Unconfirmed::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> Secret {
        Secret([byte; SECRET_BYTES])
    }

    fn transitions(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn the_mac_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_token_confirms_its_change_and_impact_until_it_expires() {
        let t = transitions(&[("1 -> 2", 30)]);
        let what = Confirmable {
            org_id: "acme",
            change: "release group g 2",
            changed: 30,
            transitions: &t,
        };
        let token = mint(&secret(7), &what, 1_000);
        assert_eq!(check(&secret(7), &what, &token, 999), Ok(()));
        assert_eq!(
            check(&secret(7), &what, &token, 1_000),
            Err(Unconfirmed::Expired)
        );
        // Another secret (a forged token) is no confirmation, expired or not.
        assert_eq!(
            check(&secret(8), &what, &token, 2_000),
            Err(Unconfirmed::Mismatch)
        );
    }

    #[test]
    fn a_token_confirms_nothing_else() {
        let t = transitions(&[("1 -> 2", 30)]);
        let what = Confirmable {
            org_id: "acme",
            change: "release group g 2",
            changed: 30,
            transitions: &t,
        };
        let token = mint(&secret(1), &what, 1_000);
        let grown = transitions(&[("1 -> 2", 31)]);
        let moved = transitions(&[("1 -> 2", 29), ("none -> 2", 1)]);
        let others = [
            Confirmable {
                org_id: "globex",
                ..what
            },
            Confirmable {
                change: "release group g 3",
                ..what
            },
            Confirmable {
                changed: 31,
                transitions: &grown,
                ..what
            },
            Confirmable {
                transitions: &moved,
                ..what
            },
        ];
        for other in &others {
            assert_eq!(
                check(&secret(1), other, &token, 0),
                Err(Unconfirmed::Mismatch),
                "{other:?}"
            );
        }
        // A later expiry written into the token breaks its signature.
        let (_, mac) = token.split_once('.').unwrap();
        for expiry in ["2000", "01000", "+1000", "", "-1"] {
            let edited = format!("{expiry}.{mac}");
            assert_eq!(
                check(&secret(1), &what, &edited, 0),
                Err(Unconfirmed::Mismatch),
                "{edited}"
            );
        }
        for junk in ["", ".", "abc", "1000.", "1000.!!", &"9".repeat(500)] {
            assert_eq!(
                check(&secret(1), &what, junk, 0),
                Err(Unconfirmed::Mismatch)
            );
        }
    }

    #[test]
    fn a_secret_is_never_printed() {
        assert_eq!(format!("{:?}", secret(9)), "Secret(…)");
    }
}
