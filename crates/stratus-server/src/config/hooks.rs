//! The backend hooks' settings: where each hook is POSTed, how long an answer may take,
//! and how many requests a node keeps in flight. Which topics ask the subscribe and
//! publish hooks is a namespace option (`subscribe-hook`, `publish-hook`); with a URL set
//! and no namespace saying otherwise, every topic asks.

use std::time::Duration;

/// The backend hooks (none set: no hook thread at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// Asked at each WebSocket upgrade that carries no token: who the connection is.
    pub connect: Option<String>,
    /// Asked at each subscribe to a topic whose namespace uses it.
    pub subscribe: Option<String>,
    /// Asked at each client publish to a topic whose namespace uses it.
    pub publish: Option<String>,
    /// Longest a hook's answer may take, waiting in line included; past it the hook
    /// refuses (upgrade: 504, v1: `hook_timeout`).
    pub timeout: Duration,
    /// Most requests in flight at once on the node; as many again times
    /// [`Hooks::QUEUE_FACTOR`] wait in line, and past that a hook refuses at once
    /// (upgrade: 503, v1: `unavailable`).
    pub concurrency: usize,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            connect: None,
            subscribe: None,
            publish: None,
            timeout: Duration::from_secs(2),
            concurrency: 64,
        }
    }
}

impl Hooks {
    /// The line behind the requests in flight is this many times `concurrency`.
    pub const QUEUE_FACTOR: usize = 4;

    /// Whether any hook is set (the node then runs a hook thread).
    pub fn any(&self) -> bool {
        self.connect.is_some() || self.subscribe.is_some() || self.publish.is_some()
    }

    /// Requests that may wait in line for a free slot.
    pub fn queue(&self) -> usize {
        self.concurrency.saturating_mul(Self::QUEUE_FACTOR).max(1)
    }

    /// A reason to refuse these settings.
    pub(crate) fn validate(&self, handshake_timeout: Duration) -> Result<(), String> {
        for (name, url) in [
            ("connect-hook", &self.connect),
            ("subscribe-hook", &self.subscribe),
            ("publish-hook", &self.publish),
        ] {
            if let Some(url) = url {
                let parsed = url::Url::parse(url).map_err(|e| format!("{name} {url:?}: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(format!("{name} {url:?}: only http:// and https:// URLs"));
                }
            }
        }
        if self.timeout.is_zero() {
            return Err("hook-timeout must be more than 0".into());
        }
        if self.connect.is_some() && self.timeout >= handshake_timeout {
            return Err(format!(
                "hook-timeout ({:?}) must be shorter than handshake-timeout ({:?}): the \
                 upgrade waits for the connect hook within it",
                self.timeout, handshake_timeout
            ));
        }
        if self.concurrency == 0 {
            return Err("hook-concurrency must be at least 1".into());
        }
        Ok(())
    }
}

impl crate::config::Config {
    /// A namespace may turn a hook on only where its URL is set.
    pub(crate) fn validate_namespace_hooks(&self) -> Result<(), String> {
        for ns in &self.namespaces {
            let o = &ns.options;
            if o.subscribe_hook == Some(true) && self.hooks.subscribe.is_none() {
                return Err(format!(
                    "namespace {:?}: subscribe-hook = true needs the subscribe-hook URL",
                    ns.prefix
                ));
            }
            if o.publish_hook == Some(true) && self.hooks.publish.is_none() {
                return Err(format!(
                    "namespace {:?}: publish-hook = true needs the publish-hook URL",
                    ns.prefix
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_a_timeout_within_the_handshake_and_some_concurrency_pass() {
        let ten = Duration::from_secs(10);
        let with = |url: &str| Hooks {
            connect: Some(url.into()),
            ..Hooks::default()
        };
        assert!(with("http://127.0.0.1:8000/connect").validate(ten).is_ok());
        assert!(with("https://auth.example/hook").validate(ten).is_ok());
        assert!(with("ftp://x/").validate(ten).is_err());
        assert!(with("not a url").validate(ten).is_err());
        let slow = Hooks {
            timeout: ten,
            ..with("http://x/")
        };
        assert!(slow.validate(ten).is_err());
        let none = Hooks {
            concurrency: 0,
            ..Hooks::default()
        };
        assert!(none.validate(ten).is_err());
        assert!(!Hooks::default().any() && with("http://x/").any());
    }
}
