//! The Entra ID side: the client credentials token endpoint and bearer token checks. Tokens are
//! JWT-shaped (header.payload.signature, base64url) so clients that read `exp` work, but they are only
//! valid because the emulator remembers issuing them; they expire after the configured lifetime.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Secret;
use crate::error::ApiError;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// An issued token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The client the token was issued to; service protection limits are counted per client.
    pub client_id: String,
    /// When it stops being accepted, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Issued tokens, by token text.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: HashMap<String, TokenRecord>,
}

/// A successful token answer.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// Same as `expires_in`, as Entra ID sends it.
    pub ext_expires_in: u64,
    /// The token.
    pub access_token: String,
}

fn token_error(status: StatusCode, error: &'static str, aadsts: u32, description: String) -> ApiError {
    ApiError::Token {
        status,
        error,
        aadsts,
        description,
    }
}

impl Tokens {
    /// Handles a client credentials request (the form fields of `POST /<tenant>/oauth2/v2.0/token`).
    pub fn issue(
        &mut self,
        tenant: &str,
        form: &BTreeMap<String, String>,
        clients: &BTreeMap<String, Secret>,
        lifetime_secs: u64,
    ) -> Result<TokenResponse, ApiError> {
        let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let missing = |name: &str| {
            token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_144,
                format!("The request body must contain the following parameter: '{name}'."),
            )
        };
        let grant_type = field("grant_type").ok_or_else(|| missing("grant_type"))?;
        if grant_type != "client_credentials" {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70_003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ));
        }
        let client_id = field("client_id").ok_or_else(|| missing("client_id"))?;
        let scope = field("scope").ok_or_else(|| missing("scope"))?;
        if !scope.ends_with("/.default") {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1_002_012,
                format!(
                    "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            ));
        }
        let Some(expected) = clients.get(client_id) else {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700_016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                ),
            ));
        };
        let secret = field("client_secret").ok_or_else(|| {
            token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."
                    .to_owned(),
            )
        })?;
        if secret != expected.expose() {
            return Err(token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            ));
        }
        let now = unix_ms();
        self.issued.retain(|_, record| record.expires_at_ms > now);
        let now_secs = now / 1000;
        let header = json!({"typ": "JWT", "alg": "none"});
        let payload = json!({
            "aud": scope.trim_end_matches("/.default"),
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": now_secs,
            "nbf": now_secs,
            "exp": now_secs + lifetime_secs,
            "appid": client_id,
            "tid": tenant,
            "jti": crate::values::Guid::new_random().to_string(),
        });
        let nonce: [u8; 24] = rand::random();
        let token = format!(
            "{}.{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(payload.to_string().as_bytes()),
            base64url(&nonce)
        );
        self.issued.insert(
            token.clone(),
            TokenRecord {
                client_id: client_id.to_owned(),
                expires_at_ms: now + lifetime_secs * 1000,
            },
        );
        Ok(TokenResponse {
            token_type: "Bearer",
            expires_in: lifetime_secs,
            ext_expires_in: lifetime_secs,
            access_token: token,
        })
    }

    /// Checks an `Authorization` header and returns the client id the token was issued to.
    pub fn validate(&self, authorization: Option<&str>) -> Result<String, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized(
                "The request has no Authorization header; a bearer token is required.",
            ));
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(ApiError::Unauthorized(
                "The Authorization header must be 'Bearer <access token>'.",
            ));
        };
        let Some(record) = self.issued.get(token.trim()) else {
            return Err(ApiError::Unauthorized("The access token is invalid."));
        };
        if record.expires_at_ms <= unix_ms() {
            return Err(ApiError::Unauthorized("The access token has expired."));
        }
        Ok(record.client_id.clone())
    }

    /// Makes every issued token expired (admin API), so clients must fetch new ones.
    pub fn expire_all(&mut self) -> usize {
        let count = self.issued.len();
        for record in self.issued.values_mut() {
            record.expires_at_ms = 0;
        }
        count
    }

    /// Forgets every token.
    pub fn clear(&mut self) {
        self.issued.clear();
    }

    /// Unexpired tokens, for the snapshot file.
    pub fn snapshot(&self) -> BTreeMap<String, TokenRecord> {
        let now = unix_ms();
        self.issued
            .iter()
            .filter(|(_, r)| r.expires_at_ms > now)
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
    }

    /// Loads tokens from the snapshot file.
    pub fn restore(&mut self, tokens: BTreeMap<String, TokenRecord>) {
        self.issued.extend(tokens);
    }
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            "The request body is not valid UTF-8.".into(),
        )
    })?;
    let mut form = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            crate::odata::percent_decode(s, true).map_err(|_| {
                token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    900_144,
                    "The request body is not valid form data.".into(),
                )
            })
        };
        form.insert(decode(name)?, decode(value)?);
    }
    Ok(form)
}

/// Base64url without padding (RFC 4648 §5), as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn clients() -> BTreeMap<String, Secret> {
        [("app".to_owned(), Secret::new("s3cret"))].into_iter().collect()
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
        ] {
            assert_eq!(base64url(input.as_bytes()), expected);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn issue_and_validate() {
        let mut tokens = Tokens::default();
        let ok = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "s3cret"),
            ("scope", "https://org.crm.dynamics.com/.default"),
        ]);
        let issued = tokens.issue("tenant", &ok, &clients(), 60).expect("token");
        assert_eq!(issued.token_type, "Bearer");
        assert_eq!(issued.expires_in, 60);
        assert_eq!(issued.access_token.split('.').count(), 3);
        let header = format!("Bearer {}", issued.access_token);
        assert_eq!(tokens.validate(Some(&header)).expect("valid"), "app");
        assert!(tokens.validate(None).is_err());
        assert!(tokens.validate(Some("Bearer nope")).is_err());
        tokens.expire_all();
        let err = tokens.validate(Some(&header)).expect_err("expired");
        assert!(err.to_string().contains("expired"));
    }

    #[test]
    fn token_request_errors() {
        let mut tokens = Tokens::default();
        let base = [
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "s3cret"),
            ("scope", "x/.default"),
        ];
        let cases: [(&str, &str, u16, &str); 5] = [
            ("client_secret", "wrong", 401, "invalid_client"),
            ("client_id", "ghost", 400, "unauthorized_client"),
            ("scope", "https://org.crm.dynamics.com", 400, "invalid_scope"),
            ("grant_type", "password", 400, "unsupported_grant_type"),
            ("client_id", "", 400, "invalid_request"),
        ];
        for (field, value, status, error) in cases {
            let mut f = form(&base);
            f.insert(field.to_owned(), value.to_owned());
            let err = tokens.issue("t", &f, &clients(), 60).expect_err(field);
            assert_eq!(err.status().as_u16(), status, "{field}");
            assert!(
                matches!(err, ApiError::Token { error: e, .. } if e == error),
                "{field}"
            );
        }
    }

    #[test]
    fn form_decoding() {
        let f = parse_form(b"a=1&scope=https%3A%2F%2Fx%2F.default&b=x+y").expect("form");
        assert_eq!(f["scope"], "https://x/.default");
        assert_eq!(f["b"], "x y");
    }
}
