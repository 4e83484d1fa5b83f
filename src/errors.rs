//! How an error reads in a log line or on stderr, and what it must never say: the secrets the process
//! holds.
//!
//! An error is its message followed by each cause, because the libraries we use (reqwest, hyper,
//! rustls) put the useful part in the causes ("error sending request" alone says nothing; "... :
//! connection refused" does).
//!
//! Secrets are taken out where text leaves the process, not where it is made: every log line (the
//! writer `service::init_logging` installs), every MQTT payload (the publisher), every record written
//! under the state and dataset folders (the outbox and offline queue, the dataset's rows) and every
//! error chain rendered here. Text from outside can carry a secret anywhere (a server that echoes the
//! key in its error body, a library that prints a URL with its password), so no call site is trusted
//! to have cleaned it. The set is the process's: `app` adds the running config's and the
//! environment's at start and after every reload or push, and the cloud client adds each token file
//! it reads. Nothing is ever taken out of it: a token rotated away may still be valid, and daemons run
//! side by side in one test process must not unmask each other's.
//!
//! A secret is matched in the forms it is written in: as is, escaped inside JSON or a Rust debug
//! string, percent-encoded (URLs) or form-encoded, and an HTTP Basic credential also as the base64 of
//! `user:password` that a server may echo from the `Authorization` header. Overlapping matches become
//! one marker. A form shorter than `MIN_SECRET_BYTES` is not matched: replacing every `1234` or
//! `admin` in every line and payload would mangle numbers and words (and break JSON) while hiding
//! little, so `config` warns about such a secret by name instead. Text from outside that is cut short
//! for a message goes through `excerpt`, which redacts before it cuts.

use std::borrow::Cow;
use std::fmt;
use std::sync::{PoisonError, RwLock};

use base64::Engine;

/// What a secret is replaced by.
pub const REDACTED: &str = "REDACTED";

/// The shortest form of a secret that is matched (the length GitLab requires of masked variables).
pub(crate) const MIN_SECRET_BYTES: usize = 8;

/// The secrets of this process, added by `hold`.
static HELD: RwLock<Secrets> = RwLock::new(Secrets { forms: Vec::new() });

/// `error` and its causes, joined by ": ", with every secret held replaced.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    redact(&text).into_owned()
}

/// Secrets in the forms they may be written in.
#[derive(Clone, Default, PartialEq)]
pub struct Secrets {
    /// Sorted, without duplicates.
    forms: Vec<Vec<u8>>,
}

/// Never shows a secret: only how many forms are held.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} forms)", self.forms.len())
    }
}

impl Secrets {
    /// Adds `secret` as is, JSON- and debug-escaped, percent- and form-encoded; the empty string and
    /// forms shorter than `MIN_SECRET_BYTES` are left out.
    pub fn add(&mut self, secret: &str) {
        let quoted = |text: String| text[1..text.len() - 1].to_owned();
        let forms = [
            secret.to_owned(),
            quoted(serde_json::to_string(secret).expect("strings serialize")),
            quoted(format!("{secret:?}")),
            percent_encoded(secret),
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        ];
        for form in forms {
            if form.len() >= MIN_SECRET_BYTES
                && let Err(at) = self.forms.binary_search(&form.as_bytes().to_vec())
            {
                self.forms.insert(at, form.into_bytes());
            }
        }
    }

    /// Adds an HTTP Basic credential: the password, and the base64 of `user:password` that the
    /// `Authorization` header carries.
    pub(crate) fn add_basic(&mut self, user: &str, password: &str) {
        self.add(password);
        self.add(&base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    }

    /// Adds every form `other` holds.
    pub fn extend(&mut self, other: &Secrets) {
        let mut forms = std::mem::take(&mut self.forms);
        forms.extend(other.forms.iter().cloned());
        forms.sort_unstable();
        forms.dedup();
        self.forms = forms;
    }

    /// Whether every form `other` holds is held here.
    fn contains(&self, other: &Secrets) -> bool {
        other
            .forms
            .iter()
            .all(|form| self.forms.binary_search(form).is_ok())
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `bytes` with every occurrence of a secret (overlapping ones merged) replaced by `REDACTED`.
    pub fn redact<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut spans = Vec::new();
        for form in &self.forms {
            let mut from = 0;
            while let Some(at) = find(&bytes[from..], form) {
                spans.push((from + at, from + at + form.len()));
                // The next match may overlap this one.
                from += at + 1;
            }
        }
        if spans.is_empty() {
            return Cow::Borrowed(bytes);
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(bytes.len());
        let mut copied = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((start, mut end)) = spans.next() {
            while let Some(&(next_start, next_end)) = spans.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                spans.next();
            }
            out.extend_from_slice(&bytes[copied..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            copied = end;
        }
        out.extend_from_slice(&bytes[copied..]);
        Cow::Owned(out)
    }
}

/// Adds `secrets` to those every output of this process is cleaned of.
pub fn hold(secrets: &Secrets) {
    // The cloud client holds its token at every request: most calls add nothing new.
    let known = HELD
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(secrets);
    if !known {
        HELD.write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(secrets);
    }
}

/// Adds one secret (a token read from a file) to those every output of this process is cleaned of.
pub(crate) fn hold_secret(secret: &str) {
    let mut secrets = Secrets::default();
    secrets.add(secret);
    hold(&secrets);
}

/// `text` with every secret held replaced by `REDACTED`.
pub fn redact(text: &str) -> Cow<'_, str> {
    match redact_bytes(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        // Whole UTF-8 sequences were replaced by ASCII, so the text is still UTF-8.
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).expect("redacted text is UTF-8")),
    }
}

/// At most `max_chars` of text from outside (a server's reply) for a message: redacted before it is
/// cut, since a cut through a secret would leave its start where no redaction can recognise it.
pub(crate) fn excerpt(text: &str, max_chars: usize) -> String {
    redact(text).chars().take(max_chars).collect()
}

/// `bytes` (a log line, a payload, a record) with every secret held replaced by `REDACTED`.
pub(crate) fn redact_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    HELD.read()
        .unwrap_or_else(PoisonError::into_inner)
        .redact(bytes)
}

/// Where `needle` first occurs in `haystack`. A needle that is UTF-8 can only match at a character
/// boundary of a haystack that is, so byte positions are safe to cut text at.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Every byte but the unreserved ones (RFC 3986: letters, digits, `-._~`) as `%XX`.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The URL with any password replaced, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(secrets: &Secrets, text: &str) -> String {
        String::from_utf8(secrets.redact(text.as_bytes()).into_owned()).unwrap()
    }

    fn of(values: &[&str]) -> Secrets {
        let mut secrets = Secrets::default();
        for value in values {
            secrets.add(value);
        }
        secrets
    }

    #[test]
    fn a_secret_is_replaced_wherever_it_occurs() {
        let secrets = of(&["hf_abcdefghijklmnop"]);
        assert_eq!(
            redacted(
                &secrets,
                "Incorrect API key provided: hf_abcdefghijklmnop (hf_abcdefghijklmnop)"
            ),
            "Incorrect API key provided: REDACTED (REDACTED)"
        );
        assert_eq!(redacted(&secrets, "nothing here"), "nothing here");
        assert!(matches!(secrets.redact(b"nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn overlapping_and_nested_secrets_become_one_marker() {
        let secrets = of(&["abcdefgh12", "gh12345678"]);
        // The two long ones overlap: one marker, nothing of either left.
        assert_eq!(redacted(&secrets, "<abcdefgh12345678>"), "<REDACTED>");
        // One inside the other.
        let nested = of(&["password-inner-part", "inner-pa"]);
        assert_eq!(
            redacted(&nested, "x password-inner-part y inner-pa z"),
            "x REDACTED y REDACTED z"
        );
        // A secret that overlaps itself ("aaaaaaaa" in nine a's).
        let repeated = of(&["aaaaaaaa"]);
        assert_eq!(redacted(&repeated, "baaaaaaaaab"), "bREDACTEDb");
    }

    #[test]
    fn encoded_forms_are_matched() {
        let mut secrets = Secrets::default();
        secrets.add("p@ss w/rd\"quoted\\");
        secrets.add_basic("viewer", "1234");
        let json = serde_json::json!({"echo": "p@ss w/rd\"quoted\\"}).to_string();
        assert_eq!(redacted(&secrets, &json), r#"{"echo":"REDACTED"}"#);
        assert_eq!(
            redacted(&secrets, &format!("{:?}", "p@ss w/rd\"quoted\\")),
            "\"REDACTED\""
        );
        assert_eq!(
            redacted(&secrets, "http://u:p%40ss%20w%2Frd%22quoted%5C@host/"),
            "http://u:REDACTED@host/"
        );
        assert_eq!(
            redacted(&secrets, "?pwd=p%40ss+w%2Frd%22quoted%5C&x=1"),
            "?pwd=REDACTED&x=1"
        );
        // A short password is not matched alone, but its Basic header is.
        let basic = base64::engine::general_purpose::STANDARD.encode("viewer:1234");
        assert_eq!(
            redacted(
                &secrets,
                &format!("got Authorization: Basic {basic}; port 1234")
            ),
            "got Authorization: Basic REDACTED; port 1234"
        );
    }

    #[test]
    fn empty_and_short_secrets_are_never_matched() {
        let secrets = of(&["", "1", "admin", "seven77"]);
        assert!(secrets.is_empty());
        let text = r#"{"version":1,"user":"admin","seq":7}"#;
        assert_eq!(redacted(&secrets, text), text);
        assert!(!of(&["eight888"]).is_empty());
    }

    #[test]
    fn text_around_secrets_keeps_its_characters() {
        let secrets = of(&["sécret-ünïcode"]);
        assert_eq!(redacted(&secrets, "äsécret-ünïcodeö"), "äREDACTEDö");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let secrets = of(&["do-not-print-me"]);
        assert!(!format!("{secrets:?}").contains("do-not-print-me"));
    }

    #[test]
    fn an_excerpt_is_cut_after_redaction() {
        hold_secret("excerpt-secret-for-the-errors-test");
        let text = "Incorrect API key provided: excerpt-secret-for-the-errors-test";
        // A cut at 40 characters would keep "excerpt-secr" of the secret.
        assert_eq!(excerpt(text, 40), "Incorrect API key provided: REDACTED");
        assert_eq!(excerpt(text, 31), "Incorrect API key provided: RED");
    }

    #[test]
    fn held_secrets_are_taken_out_of_error_chains() {
        hold_secret("chain-secret-for-the-errors-test");
        let error = std::io::Error::other("rejected chain-secret-for-the-errors-test");
        assert_eq!(chain(&error), "rejected REDACTED");
        assert_eq!(
            redact("a chain-secret-for-the-errors-test b"),
            "a REDACTED b"
        );
    }
}
