//! How a node reaches its Redis broker safely: `rediss://` (TLS, the server's certificate
//! always checked) and an ACL user and password, given in the URL or, better, in settings
//! kept out of it (an environment variable or a file, so the URL can be printed and shared).
//!
//! Credentials never leave this module as text: a URL that goes into an error or a log line
//! goes through [`redact`] first, and a password is a [`Secret`], whose `Debug` prints
//! `<redacted>` and which has no `Display`. Redis's own errors name neither the URL nor
//! the password, so they are passed on as they are.
//!
//! Whom a `rediss://` node trusts: with no `ca`, the Mozilla roots compiled in
//! (`webpki-roots`, the set the hooks' HTTP client trusts too), which is what a managed
//! Redis with a public certificate needs and what works in a container without a system
//! bundle; with `ca`, only the certificates in that PEM file: a private CA, a self-signed
//! Redis, or the host's own bundle (`/etc/ssl/certs/ca-certificates.crt`) to trust what the
//! host trusts. There is no `#insecure`, and no client certificate (Redis must run with
//! `tls-auth-clients no` or `optional`; the ACL password is what signs the node in).

use std::fmt;
use std::path::{Path, PathBuf};

use redis::{ConnectionAddr, IntoConnectionInfo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A password. It has no `Display` and its `Debug` prints `<redacted>`, so it cannot end
/// up in a log line, an error or a `{:?}` of the config by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret in the file at `path`, without the line break(s) that end it (an editor
    /// or `echo` adds one; a password that ends in one cannot be kept in a file). An empty
    /// file is an error, and so is one that cannot be read; the error names the path, never
    /// what is in the file.
    pub fn read_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{}: the password is not UTF-8", path.display()))?;
        let value = text.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(format!("{}: the file is empty", path.display()));
        }
        Ok(Self(value.to_owned()))
    }

    /// The secret itself, for the one place that sends it (Redis's `AUTH`).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the node signs in to Redis (an ACL user and its password) and checks Redis's TLS
/// certificate: the same for every broker URL the node is given. A URL may carry its own
/// user and password instead (`redis://user:password@host`), but a credential may come from
/// one place only: a URL with a password and `password` set too is refused, not silently
/// resolved, and so is a user name in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerAuth {
    /// The ACL user (`AUTH user password`); `None`: the URL's, else Redis's `default`.
    pub username: Option<String>,
    /// The password; `None`: the URL's, if it has one, else none (no `AUTH`).
    pub password: Option<Secret>,
    /// A PEM file with the certificates that may sign the Redis server's certificate
    /// (`rediss://` only); `None`: the Mozilla roots compiled in.
    pub ca: Option<PathBuf>,
}

impl BrokerAuth {
    /// A client for the Redis at `url` (`redis://` or `rediss://`), signing in with these
    /// credentials and trusting these roots. Nothing is connected yet: the errors are about
    /// the settings (the URL, where a credential comes from, the CA file), and each names
    /// the URL with its password masked.
    pub(crate) fn client(&self, url: &str) -> Result<redis::Client, String> {
        let fail = |why: &str| format!("broker {}: {why}", redact(url));
        let parsed = url::Url::parse(url).map_err(|e| fail(&e.to_string()))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(fail("only redis:// and rediss:// (TLS) URLs are supported")),
        };
        if parsed.fragment().is_some() {
            return Err(fail(
                "a URL fragment (#insecure) is not supported: the server's certificate is \
                 always checked (name its CA with broker-ca)",
            ));
        }
        if !tls && self.ca.is_some() {
            return Err(fail(
                "broker-ca is set but this is a redis:// URL (plain TCP): use rediss:// for TLS",
            ));
        }
        if parsed.password().is_some() && self.password.is_some() {
            return Err(fail(
                "the URL has a password and broker-password (or broker-password-file) is set \
                 too: give it in one place",
            ));
        }
        if !parsed.username().is_empty() && self.username.is_some() {
            return Err(fail(
                "the URL has a user name and broker-username is set too: give it in one place",
            ));
        }
        let info = parsed
            .as_str()
            .into_connection_info()
            .map_err(|e| fail(&e.to_string()))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password.expose());
        }
        if settings.username().is_some() && settings.password().is_none() {
            return Err(fail(
                "a user name without a password (set broker-password or broker-password-file)",
            ));
        }
        let info = info.set_redis_settings(settings);
        if !tls {
            return redis::Client::open(info).map_err(|e| fail(&e.to_string()));
        }
        // The redis crate builds its TLS config with the process's default provider: make
        // it ring, the provider the listeners use, whatever features the build unified.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let Some(path) = &self.ca else {
            return redis::Client::open(info).map_err(|e| fail(&e.to_string()));
        };
        let pem =
            std::fs::read(path).map_err(|e| fail(&format!("broker-ca {}: {e}", path.display())))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&format!("broker-ca {}: {e}", path.display())))?;
        if certificates.is_empty() {
            return Err(fail(&format!(
                "broker-ca {}: no PEM certificate in it",
                path.display()
            )));
        }
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        };
        redis::Client::build_with_tls(info, certificates).map_err(|e| fail(&e.to_string()))
    }
}

/// A Redis Cluster seed's URL (`redis+cluster://` or `rediss+cluster://`, as `--broker`
/// names one) as the URL of a plain connection to that server (`redis://`, `rediss://`);
/// `None` for any other URL.
pub(crate) fn cluster_seed(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let plain = scheme.strip_suffix("+cluster")?;
    matches!(plain, "redis" | "rediss").then(|| format!("{plain}://{rest}"))
}

/// What a failed connection to the broker at `client` means, for the log: Redis's or the
/// TLS layer's own words (they name neither the URL nor a credential), and for the
/// failures a setting causes (the credentials, the CA, a plain URL to a TLS port) what to
/// look at.
pub(crate) fn connect_failure(client: &redis::Client, err: &redis::RedisError) -> String {
    let tls = matches!(
        client.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    );
    const REFUSED: &str = "Redis refused the credentials: check broker-username and \
                           broker-password (or broker-password-file, or the URL's)";
    let text = err.to_string();
    let hint = match err.code() {
        Some("WRONGPASS" | "NOAUTH") => REFUSED,
        Some("NOPERM") => "the ACL user may not run a command Stratus needs (see the README)",
        _ if err.kind() == redis::ErrorKind::AuthenticationFailed => REFUSED,
        _ if tls && text.contains("certificate") => {
            "the TLS handshake failed on Redis's certificate: it must be signed by a CA in \
             broker-ca (or, without it, a public CA) and name the URL's host"
        }
        _ if tls && (text.contains("corrupt message") || text.contains("InvalidContentType")) => {
            "Redis did not answer in TLS: if this port takes plain connections, use redis://"
        }
        // A plain Redis takes a TLS hello for the start of a command and waits for the
        // rest; so does a proxy, though, and a network that drops everything.
        // So a timeout after a healthy session (a partition) is not blamed on the URL.
        _ if tls && err.is_timeout() => {
            "no answer to the TLS handshake: Redis or the network to it is not answering, or, \
             if this port takes plain connections, use redis://"
        }
        _ if tls || err.is_connection_refusal() => "",
        _ if err.is_connection_dropped() => {
            "Redis closed the connection: it may be restarting, or, if this port only takes \
             TLS, use rediss://"
        }
        _ => "",
    };
    match hint {
        "" => text,
        hint => format!("{text} ({hint})"),
    }
}

/// `text` (a URL, a list of them, or text that did not parse as one) with the password of
/// every `scheme://user:password@host` in it replaced by `***`: what goes into an error, a
/// log line or `config check`. It errs on the side of hiding: within each URL (up to the
/// next `://`) everything from the first `:` of the user part to the last `@` is masked,
/// so a password holding `@`, `/` or `#` unencoded is hidden whole. Text without `://` is
/// taken as one URL without its scheme.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    let Some(first) = text.find("://") else {
        mask_userinfo(text, false, &mut out);
        return out;
    };
    out.push_str(&text[..first + 3]);
    let mut token = names_a_token(&text[..first]);
    let mut rest = &text[first + 3..];
    loop {
        let end = rest.find("://").map_or(rest.len(), |i| i + 3);
        mask_userinfo(&rest[..end], token, &mut out);
        if end == rest.len() {
            return out;
        }
        token = names_a_token(&rest[..end - 3]);
        rest = &rest[end..];
    }
}

/// Whether the scheme that ends `before` (the text up to a `://`) is NATS's, whose URLs
/// carry a token as a user name alone (`nats://token@host`).
fn names_a_token(before: &str) -> bool {
    let scheme = before
        .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '+'))
        .next()
        .unwrap_or_default();
    matches!(scheme, "nats" | "tls")
}

/// Appends `part` (what follows a `scheme://`) with the password in its user part masked
/// (and, if it is a `token` scheme's, a user name alone, which is a token there).
fn mask_userinfo(part: &str, token: bool, out: &mut String) {
    let Some(at) = part.rfind('@') else {
        out.push_str(part);
        return;
    };
    let user = &part[..at];
    match user.find(':') {
        Some(colon) => {
            out.push_str(&user[..=colon]);
            out.push_str("***");
        }
        None if token => out.push_str("***"),
        None => out.push_str(user),
    }
    out.push_str(&part[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_masks_every_password_and_only_passwords() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "redis://stratus:hunter2@10.0.0.5:6379/2",
                "redis://stratus:***@10.0.0.5:6379/2",
            ),
            (
                "rediss://:hunter2@redis.internal",
                "rediss://:***@redis.internal",
            ),
            ("redis://stratus@host:6379", "redis://stratus@host:6379"),
            ("redis://u:p%40ss@host", "redis://u:***@host"),
            ("redis://u:p@ss/w#rd@host:1/0", "redis://u:***@host:1/0"),
            ("redis://:pw@[::1]:6379", "redis://:***@[::1]:6379"),
            ("redis://u:@host", "redis://u:***@host"),
            (
                "redis://a:one@h1:1/0,rediss://b:two@h2:2,redis://h3",
                "redis://a:***@h1:1/0,rediss://b:***@h2:2,redis://h3",
            ),
            ("stratus:hunter2@host:6379", "stratus:***@host:6379"),
            (
                "redis+cluster://u:hunter2@a:1,rediss+cluster://:pw@b:2",
                "redis+cluster://u:***@a:1,rediss+cluster://:***@b:2",
            ),
            ("nats://s3cret-token@host:4222", "nats://***@host:4222"),
            (
                "nats://u:pw@a:4222,tls://tok@b:4222,redis://user@c",
                "nats://u:***@a:4222,tls://***@b:4222,redis://user@c",
            ),
            ("not a url at all", "not a url at all"),
            ("", ""),
        ];
        for (text, shown) in cases {
            assert_eq!(redact(text), shown, "{text}");
        }
        for text in ["redis://u:p@ss/w#rd@host:1/0", "x://a:b@c://d:hunter2@e"] {
            let shown = redact(text);
            assert!(
                !shown.contains("hunter2") && !shown.contains("w#rd"),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_secret_is_never_printed() {
        let auth = BrokerAuth {
            username: Some("stratus".into()),
            password: Some(Secret::new("hunter2")),
            ca: None,
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_password_file_loses_its_line_break_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("stratus-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "s3cret with spaces \r\n").unwrap();
        assert_eq!(
            Secret::read_file(&path).unwrap(),
            Secret::new("s3cret with spaces ")
        );
        std::fs::write(&path, "\n").unwrap();
        let err = Secret::read_file(&path).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let missing = Secret::read_file(&dir.join("missing")).unwrap_err();
        assert!(missing.contains("missing"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The user and password the client signs in with, and whether it speaks TLS.
    fn signs_in_as(auth: &BrokerAuth, url: &str) -> (Option<String>, Option<String>, bool) {
        let client = auth.client(url).unwrap();
        let info = client.get_connection_info();
        let settings = info.redis_settings();
        (
            settings.username().map(str::to_owned),
            settings.password().map(str::to_owned),
            matches!(info.addr(), ConnectionAddr::TcpTls { .. }),
        )
    }

    #[test]
    fn credentials_come_from_the_url_or_the_settings_never_both() {
        let none = BrokerAuth::default();
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            signs_in_as(&none, "redis://127.0.0.1:6379/0"),
            (None, None, false)
        );
        assert_eq!(
            signs_in_as(&none, "rediss://stratus:p%40ss@redis.internal:6380/1"),
            (s("stratus"), s("p@ss"), true),
            "from the URL, percent-decoded"
        );
        let settings = BrokerAuth {
            username: s("stratus"),
            password: Some(Secret::new("from-env")),
            ca: None,
        };
        assert_eq!(
            signs_in_as(&settings, "rediss://redis.internal"),
            (s("stratus"), s("from-env"), true),
            "from the settings"
        );
        let password_only = BrokerAuth {
            password: Some(Secret::new("from-env")),
            ..BrokerAuth::default()
        };
        assert_eq!(
            signs_in_as(&password_only, "redis://stratus@127.0.0.1"),
            (s("stratus"), s("from-env"), false),
            "the user from the URL, the password from the settings"
        );
        assert_eq!(
            signs_in_as(&password_only, "redis://127.0.0.1"),
            (None, s("from-env"), false),
            "a password alone signs in as Redis's default user"
        );
        for (auth, url, why) in [
            (
                &settings,
                "redis://:url-pw@127.0.0.1",
                "give it in one place",
            ),
            (&settings, "redis://other@127.0.0.1", "give it in one place"),
            (&none, "redis://stratus@127.0.0.1", "without a password"),
        ] {
            let err = auth.client(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("url-pw"), "{err}");
        }
    }

    #[test]
    fn only_checked_tls_and_plain_redis_urls_are_accepted() {
        let none = BrokerAuth::default();
        for (url, why) in [
            ("http://127.0.0.1:6379", "only redis://"),
            ("unix:///run/redis.sock", "only redis://"),
            ("rediss://127.0.0.1:6379/#insecure", "always checked"),
            ("redis://u:hunter2@127.0.0.1:6379/x", "database"),
            ("redis://u:hunter2@:6379", "broker redis://u:***@:6379"),
        ] {
            let err = none.client(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let dir = std::env::temp_dir().join(format!("stratus-broker-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let with_ca = BrokerAuth {
            ca: Some(ca.clone()),
            ..BrokerAuth::default()
        };
        let err = with_ca.client("redis://127.0.0.1").unwrap_err();
        assert!(err.contains("use rediss://"), "{err}");
        let err = with_ca.client("rediss://127.0.0.1").unwrap_err();
        assert!(err.contains("ca.pem"), "a missing file: {err}");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = with_ca.client("rediss://127.0.0.1").unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, made.cert.pem()).unwrap();
        assert!(with_ca.client("rediss://localhost:6380").is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
