//! How a node reaches a NATS broker (`--broker nats://host:4222`): its servers, how it
//! signs in, and whom it trusts over TLS, from the URLs and the same broker settings as
//! Redis (`broker-username`, `broker-password`, `broker-password-file`, `broker-ca`).
//!
//! Several URLs are the servers of one NATS cluster (the client tries them in turn and
//! learns the rest from the cluster), not shards: NATS spreads subjects over its cluster
//! itself. `tls://` asks for TLS (as NATS's own tools write it); with `broker-ca` only the
//! certificates in that file are trusted, without it the Mozilla roots compiled in.
//!
//! Credentials, as NATS takes them: a user and password (`nats://user:pw@host`, or the
//! settings), or a token (`nats://token@host`, or `broker-password` without a user). As
//! with Redis, each may come from one place only, and no text this module makes holds one.

use std::path::PathBuf;

use super::broker::{BrokerAuth, Secret, redact};

/// How the node signs in to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NatsCredentials {
    None,
    UserPassword(String, Secret),
    Token(Secret),
}

/// A NATS broker as `--broker` and the broker settings name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NatsBroker {
    /// The servers, `nats://host:port` or `tls://host:port`, without credentials.
    pub(crate) servers: Vec<String>,
    pub(crate) credentials: NatsCredentials,
    /// TLS (any `tls://` URL asks for it on every server).
    pub(crate) tls: bool,
    /// The PEM file whose certificates may sign the servers' (`None`: the Mozilla roots).
    pub(crate) ca: Option<PathBuf>,
}

/// Whether `url` names a NATS server.
pub(crate) fn is_nats(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| matches!(scheme, "nats" | "tls"))
}

impl BrokerAuth {
    /// The NATS broker at `urls` (every one `nats://` or `tls://`), signing in with these
    /// settings or the URLs' credentials. Errors name the URL with its secrets masked.
    pub(crate) fn nats(&self, urls: &[&str]) -> Result<NatsBroker, String> {
        let mut servers = Vec::with_capacity(urls.len());
        let mut from_urls = NatsCredentials::None;
        let mut tls = false;
        for url in urls {
            let fail = |why: &str| format!("broker {}: {why}", redact(url));
            let parsed = url::Url::parse(url).map_err(|e| fail(&e.to_string()))?;
            tls |= parsed.scheme() == "tls";
            if !is_nats(url) {
                return Err(fail(
                    "a NATS broker is named by nats:// or tls:// URLs only",
                ));
            }
            let host = parsed.host_str().ok_or_else(|| fail("no host"))?;
            if parsed.path().len() > 1 || parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(fail(
                    "a NATS URL is scheme://[credentials@]host[:port] only",
                ));
            }
            let port = parsed.port().unwrap_or(4222);
            servers.push(format!("{}://{host}:{port}", parsed.scheme()));
            let user = percent_decode(parsed.username());
            let here = match (user.is_empty(), parsed.password()) {
                (true, None) => NatsCredentials::None,
                (false, None) => NatsCredentials::Token(Secret::new(user)),
                (_, Some(password)) => {
                    NatsCredentials::UserPassword(user, Secret::new(percent_decode(password)))
                }
            };
            match (&from_urls, here) {
                (_, NatsCredentials::None) => {}
                (NatsCredentials::None, here) => from_urls = here,
                (known, here) if *known == here => {}
                _ => return Err(fail("the URLs carry different credentials: give one set")),
            }
        }
        if !tls && self.ca.is_some() {
            return Err("broker-ca is set but no broker URL is tls:// (NATS over TLS)".to_owned());
        }
        let credentials = match (from_urls, &self.username, &self.password) {
            (found, None, None) => found,
            (NatsCredentials::None, Some(user), Some(password)) => {
                NatsCredentials::UserPassword(user.clone(), password.clone())
            }
            (NatsCredentials::None, None, Some(token)) => NatsCredentials::Token(token.clone()),
            (NatsCredentials::None, Some(_), None) => {
                return Err(
                    "broker-username without a password (set broker-password or \
                            broker-password-file)"
                        .to_owned(),
                );
            }
            _ => {
                return Err("the broker URL carries credentials and broker-username or \
                            broker-password is set too: give them in one place"
                    .to_owned());
            }
        };
        Ok(NatsBroker {
            servers,
            credentials,
            tls,
            ca: self.ca.clone(),
        })
    }
}

/// A URL's percent-encoded user or password, decoded (as typed, if it is not UTF-8).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_or_else(|_| text.to_owned(), |decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> BrokerAuth {
        BrokerAuth::default()
    }

    #[test]
    fn nats_urls_give_servers_and_credentials() {
        let plain = auth().nats(&["nats://127.0.0.1:4222", "nats://b"]).unwrap();
        assert_eq!(plain.servers, ["nats://127.0.0.1:4222", "nats://b:4222"]);
        assert_eq!(plain.credentials, NatsCredentials::None);
        assert!(!plain.tls);

        let user = auth().nats(&["nats://me:p%40ss@h:1"]).unwrap();
        assert_eq!(
            user.credentials,
            NatsCredentials::UserPassword("me".into(), Secret::new("p@ss"))
        );
        assert_eq!(
            user.servers,
            ["nats://h:1"],
            "no credentials in the servers"
        );
        let token = auth().nats(&["tls://t0k@h:1", "tls://t0k@h:2"]).unwrap();
        assert_eq!(
            token.credentials,
            NatsCredentials::Token(Secret::new("t0k"))
        );
        assert!(token.tls);

        let settings = BrokerAuth {
            username: Some("svc".into()),
            password: Some(Secret::new("pw")),
            ca: None,
        };
        let signed = settings.nats(&["nats://h"]).unwrap();
        assert_eq!(
            signed.credentials,
            NatsCredentials::UserPassword("svc".into(), Secret::new("pw"))
        );
        let token = BrokerAuth {
            password: Some(Secret::new("tok")),
            ..auth()
        };
        assert_eq!(
            token.nats(&["nats://h"]).unwrap().credentials,
            NatsCredentials::Token(Secret::new("tok"))
        );
    }

    #[test]
    fn bad_nats_settings_are_refused_without_their_secrets() {
        let both = BrokerAuth {
            password: Some(Secret::new("pw")),
            ..auth()
        };
        let cases: [(BrokerAuth, &[&str]); 6] = [
            (both, &["nats://u:hunter2@h"]),
            (auth(), &["nats://a:hunter2@h", "nats://b:other@h2"]),
            (auth(), &["nats://h/path"]),
            (auth(), &["nats://h", "redis://h"]),
            (
                BrokerAuth {
                    ca: Some("/tmp/ca.pem".into()),
                    ..auth()
                },
                &["nats://h"],
            ),
            (
                BrokerAuth {
                    username: Some("u".into()),
                    ..auth()
                },
                &["nats://h"],
            ),
        ];
        for (settings, urls) in cases {
            let err = settings.nats(urls).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(!err.contains("other"), "{err}");
        }
    }
}
