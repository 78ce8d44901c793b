//! Devices by the cellular identifiers they report: the kinds, their formats, and the lookup of a batch.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::store::StoreError;

/// The cellular identifiers devices report, each a built-in string field of the same (lower-case) name.
/// Read in any case (`IMEI`, `imei`, `Imei`), as cellular platforms write them; written in lower case.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierKind {
    Imei,
    Iccid,
    Esn,
    Mdn,
    Meid,
    Msisdn,
}

impl<'de> serde::Deserialize<'de> for IdentifierKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        IdentifierKind::ALL
            .into_iter()
            .find(|kind| kind.field().eq_ignore_ascii_case(&name))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown identifier kind {:?}: expected one of esn, iccid, imei, mdn, meid, msisdn (any case)",
                    name.chars().take(32).collect::<String>()
                ))
            })
    }
}

impl IdentifierKind {
    /// Every kind, in the order of the catalogue.
    pub const ALL: [IdentifierKind; 6] = [
        IdentifierKind::Imei,
        IdentifierKind::Iccid,
        IdentifierKind::Esn,
        IdentifierKind::Mdn,
        IdentifierKind::Meid,
        IdentifierKind::Msisdn,
    ];

    /// The catalogue field (and attribute) holding it.
    pub fn field(self) -> &'static str {
        match self {
            IdentifierKind::Imei => "imei",
            IdentifierKind::Iccid => "iccid",
            IdentifierKind::Esn => "esn",
            IdentifierKind::Mdn => "mdn",
            IdentifierKind::Meid => "meid",
            IdentifierKind::Msisdn => "msisdn",
        }
    }

    /// The name people use for it, for messages.
    pub fn label(self) -> &'static str {
        match self {
            IdentifierKind::Imei => "IMEI",
            IdentifierKind::Iccid => "ICCID",
            IdentifierKind::Esn => "ESN",
            IdentifierKind::Mdn => "MDN",
            IdentifierKind::Meid => "MEID",
            IdentifierKind::Msisdn => "MSISDN",
        }
    }

    /// Checks the identifier's format; the error is a message for the API's caller.
    pub fn validate(self, identifier: &str) -> Result<(), String> {
        let digits = |min: usize, max: usize| {
            (min..=max).contains(&identifier.len())
                && identifier.bytes().all(|b| b.is_ascii_digit())
        };
        let (ok, rule) = match self {
            IdentifierKind::Imei => (digits(1, 15), "up to 15 decimal digits"),
            IdentifierKind::Iccid => (digits(1, 20), "up to 20 decimal digits"),
            IdentifierKind::Esn => (digits(11, 11), "exactly 11 decimal digits"),
            IdentifierKind::Mdn => (digits(10, 10), "exactly 10 decimal digits"),
            IdentifierKind::Msisdn => (digits(11, 11), "exactly 11 decimal digits"),
            IdentifierKind::Meid => (
                identifier.len() == 14 && identifier.bytes().all(|b| b.is_ascii_hexdigit()),
                "exactly 14 hexadecimal characters",
            ),
        };
        if ok {
            return Ok(());
        }
        let mut quoted: String = identifier.chars().take(32).collect();
        if quoted.len() < identifier.len() {
            quoted.push('…');
        }
        Err(format!("{} must be {rule}, got {quoted:?}", self.label()))
    }

    /// The form identifiers are compared in: MEIDs (hexadecimal) in upper case, the others as given.
    pub fn normalize(self, identifier: &str) -> String {
        match self {
            IdentifierKind::Meid => identifier.to_ascii_uppercase(),
            _ => identifier.to_string(),
        }
    }

    /// The key `cohort_device_identifiers(attributes)` (migration `…000004_identifiers`) stores for it.
    fn key(self, identifier: &str) -> String {
        format!("{}:{}", self.field(), self.normalize(identifier))
    }
}

/// The device of each identifier in `org_id` (`None` when no device of the org reports it), in input
/// order. Identifiers are not validated here (see [`IdentifierKind::validate`]); an MEID matches in any
/// case. Should several devices of the org report the same identifier, the smallest device id answers.
/// One query for the whole batch, served by the primary key of `device_identifiers` (kept in step with
/// `devices` by triggers; see the migration `…000004_identifiers.sql` for why).
pub async fn resolve_identifiers(
    pool: &PgPool,
    org_id: &str,
    ids: &[(IdentifierKind, String)],
) -> Result<Vec<Option<String>>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|(kind, id)| kind.key(id)).collect();
    let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT identifier, min(device_id) FROM device_identifiers \
         WHERE org_id = $1 AND identifier = ANY($2::text[]) GROUP BY identifier",
    )
    .bind(org_id)
    .bind(&wanted)
    .fetch_all(pool)
    .await?;
    let found: HashMap<String, String> = rows.into_iter().collect();
    Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_formats_follow_their_standards() {
        use IdentifierKind::*;
        let ok = [
            (Imei, "356938035643809"),
            (Imei, "1"),
            (Iccid, "89014103211118510720"),
            (Iccid, "8901"),
            (Esn, "12345678901"),
            (Mdn, "5551234567"),
            (Meid, "A0000000002329"),
            (Meid, "a0000000002329"),
            (Msisdn, "15551234567"),
        ];
        for (kind, id) in ok {
            assert_eq!(kind.validate(id), Ok(()), "{kind:?} {id}");
        }
        let bad = [
            (
                Imei,
                "3569380356438091",
                "IMEI must be up to 15 decimal digits",
            ),
            (Imei, "", "IMEI must be up to 15 decimal digits"),
            (
                Imei,
                "35693803564380x",
                "IMEI must be up to 15 decimal digits",
            ),
            (
                Iccid,
                "890141032111185107201",
                "ICCID must be up to 20 decimal digits",
            ),
            (Esn, "1234567890", "ESN must be exactly 11 decimal digits"),
            (Esn, "123456789012", "ESN must be exactly 11 decimal digits"),
            (Mdn, "555123456", "MDN must be exactly 10 decimal digits"),
            (Mdn, "555-123-4567", "MDN must be exactly 10 decimal digits"),
            (
                Meid,
                "A000000000232",
                "MEID must be exactly 14 hexadecimal characters",
            ),
            (
                Meid,
                "G0000000002329",
                "MEID must be exactly 14 hexadecimal characters",
            ),
            (
                Msisdn,
                "+15551234567",
                "MSISDN must be exactly 11 decimal digits",
            ),
            (
                Msisdn,
                "1555123456",
                "MSISDN must be exactly 11 decimal digits",
            ),
            // Non-ASCII digits are not decimal digits here.
            (
                Mdn,
                "５５５１２３４５６７",
                "MDN must be exactly 10 decimal digits",
            ),
        ];
        for (kind, id, message) in bad {
            let err = kind.validate(id).unwrap_err();
            assert!(err.starts_with(message), "{kind:?} {id}: {err}");
            assert!(err.contains(&format!("{id:?}")), "quotes the value: {err}");
        }
        let long = "9".repeat(1000);
        let err = Imei.validate(&long).unwrap_err();
        assert!(err.len() < 100, "only a prefix is quoted: {err}");
    }

    #[test]
    fn kinds_name_their_fields_and_serialise_in_lower_case() {
        for kind in IdentifierKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.field());
            assert_eq!(
                serde_json::from_value::<IdentifierKind>(json).unwrap(),
                kind
            );
            assert_eq!(kind.label().to_lowercase(), kind.field());
        }
        assert_eq!(
            IdentifierKind::Meid.normalize("a0000000002329"),
            "A0000000002329"
        );
        assert_eq!(IdentifierKind::Imei.key("0123"), "imei:0123");
    }
}
