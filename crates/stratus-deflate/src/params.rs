//! The extension's parameters (RFC 7692 §7.1): parsed from one offer or response with
//! every rule checked, and rendered back for the response header.

use std::fmt;

use stratus_proto::extensions::Extension;

/// Why an offer's or response's parameters are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// A parameter the extension does not define.
    #[error("unknown parameter {0}")]
    Unknown(String),
    /// A parameter given twice.
    #[error("parameter {0} given twice")]
    Repeated(String),
    /// A flag given a value, or a window size without one.
    #[error("parameter {0} has a missing or unexpected value")]
    BadValue(String),
    /// A window size outside 8..15 (or not a plain decimal).
    #[error("window bits {0} out of range 8..15")]
    WindowBits(String),
}

/// A window-size parameter: absent, present without a value (client_max_window_bits in an
/// offer only), or a number of bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowBits {
    /// Not given.
    #[default]
    Absent,
    /// Given without a value.
    Unspecified,
    /// Given with a value in 8..=15.
    Bits(u8),
}

impl WindowBits {
    /// The number of bits, if a value was given.
    pub fn bits(self) -> Option<u8> {
        match self {
            Self::Bits(b) => Some(b),
            _ => None,
        }
    }
}

/// The parameters of one permessage-deflate offer or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeflateParams {
    /// The server resets its compression context after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after each message.
    pub client_no_context_takeover: bool,
    /// The server's LZ77 window.
    pub server_max_window_bits: WindowBits,
    /// The client's LZ77 window.
    pub client_max_window_bits: WindowBits,
}

fn bits(name: &str, value: &str) -> Result<u8, ParamError> {
    // 1*DIGIT without leading zeros, 8..15 (RFC 7692 §7.1.2).
    match value {
        "8" | "9" | "10" | "11" | "12" | "13" | "14" | "15" => value
            .parse()
            .map_err(|_| ParamError::WindowBits(value.to_owned())),
        _ if value.is_empty() => Err(ParamError::BadValue(name.to_owned())),
        _ => Err(ParamError::WindowBits(value.to_owned())),
    }
}

impl DeflateParams {
    /// Parses the parameters of a `permessage-deflate` extension element. A window size
    /// without a value is accepted only where `allow_unspecified_client_bits` (an offer).
    pub fn parse(ext: &Extension, allow_unspecified_client_bits: bool) -> Result<Self, ParamError> {
        let mut out = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in &ext.params {
            if seen.contains(&name.as_str()) {
                return Err(ParamError::Repeated(name.clone()));
            }
            seen.push(name);
            let flag = |value: &Option<String>| match value {
                None => Ok(true),
                Some(_) => Err(ParamError::BadValue(name.clone())),
            };
            match name.as_str() {
                "server_no_context_takeover" => out.server_no_context_takeover = flag(value)?,
                "client_no_context_takeover" => out.client_no_context_takeover = flag(value)?,
                "server_max_window_bits" => {
                    let v = value
                        .as_deref()
                        .ok_or_else(|| ParamError::BadValue(name.clone()))?;
                    out.server_max_window_bits = WindowBits::Bits(bits(name, v)?);
                }
                "client_max_window_bits" => {
                    out.client_max_window_bits = match value.as_deref() {
                        Some(v) => WindowBits::Bits(bits(name, v)?),
                        None if allow_unspecified_client_bits => WindowBits::Unspecified,
                        None => return Err(ParamError::BadValue(name.clone())),
                    };
                }
                _ => return Err(ParamError::Unknown(name.clone())),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for DeflateParams {
    /// The extension element, e.g. `permessage-deflate; server_no_context_takeover`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::EXTENSION_NAME)?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        for (name, bits) in [
            ("server_max_window_bits", self.server_max_window_bits),
            ("client_max_window_bits", self.client_max_window_bits),
        ] {
            match bits {
                WindowBits::Absent => {}
                WindowBits::Unspecified => write!(f, "; {name}")?,
                WindowBits::Bits(b) => write!(f, "; {name}={b}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_proto::extensions::parse;

    fn offer(s: &str) -> Result<DeflateParams, ParamError> {
        let ext = parse(&[s.to_owned()]).remove(0).unwrap();
        DeflateParams::parse(&ext, true)
    }

    #[test]
    fn every_parameter_parses() {
        let p = offer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits",
        )
        .unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!(p.server_max_window_bits, WindowBits::Bits(10));
        assert_eq!(p.client_max_window_bits, WindowBits::Unspecified);
        assert_eq!(offer(&p.to_string()).unwrap(), p, "rendering round-trips");
    }

    #[test]
    fn quoted_values_are_accepted() {
        let p = offer("permessage-deflate; client_max_window_bits=\"12\"").unwrap();
        assert_eq!(p.client_max_window_bits, WindowBits::Bits(12));
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in ["7", "16", "abc", "08", "-9", ""] {
            let s = format!("permessage-deflate; server_max_window_bits={bad}");
            let ext = parse(&[s]).remove(0);
            if let Ok(ext) = ext {
                assert!(DeflateParams::parse(&ext, true).is_err(), "{bad}");
            }
        }
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits"),
            Err(ParamError::BadValue("server_max_window_bits".into()))
        );
        assert_eq!(
            offer("permessage-deflate; server_no_context_takeover=1"),
            Err(ParamError::BadValue("server_no_context_takeover".into()))
        );
    }

    #[test]
    fn unknown_and_repeated_parameters_are_rejected() {
        assert_eq!(
            offer("permessage-deflate; x=1"),
            Err(ParamError::Unknown("x".into()))
        );
        assert_eq!(
            offer("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            Err(ParamError::Repeated("client_no_context_takeover".into()))
        );
    }

    #[test]
    fn client_bits_without_value_only_in_offers() {
        let ext = parse(&["permessage-deflate; client_max_window_bits".to_owned()])
            .remove(0)
            .unwrap();
        assert!(DeflateParams::parse(&ext, false).is_err());
    }
}
