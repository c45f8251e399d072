//! The Sec-WebSocket-Extensions grammar (RFC 6455 §9.1): a comma-separated list of
//! extensions, each a name with `;`-separated parameters, each parameter a token with an
//! optional value (token or quoted-string).
//!
//! Parsing is lenient at the list level and strict per extension: an extension whose
//! syntax is broken is dropped (reported as `Err` in its place), so the extension layer
//! can decline it and still consider the offers around it.

/// One extension of the list: a name and its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order; a value is unquoted.
    pub params: Vec<(String, Option<String>)>,
}

/// An extension whose syntax is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedExtension;

fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c)
}

fn token(s: &str) -> Result<&str, MalformedExtension> {
    let s = s.trim_matches([' ', '\t']);
    if !s.is_empty() && s.chars().all(is_token_char) {
        Ok(s)
    } else {
        Err(MalformedExtension)
    }
}

/// Splits `s` at `sep` outside quoted strings.
fn split_unquoted(s: &str, sep: char) -> Result<Vec<&str>, MalformedExtension> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(MalformedExtension);
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn value(s: &str) -> Result<String, MalformedExtension> {
    let s = s.trim_matches([' ', '\t']);
    match s.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"').ok_or(MalformedExtension)?;
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().ok_or(MalformedExtension)?
                } else {
                    c
                });
            }
            // RFC 6455 §9.1: a quoted value must still be a token once unquoted.
            token(&out)?;
            Ok(out)
        }
        None => token(s).map(str::to_owned),
    }
}

fn extension(s: &str) -> Result<Extension, MalformedExtension> {
    let mut parts = split_unquoted(s, ';')?.into_iter();
    let name = token(parts.next().unwrap_or_default())?.to_owned();
    let params = parts
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((token(k)?.to_ascii_lowercase(), Some(value(v)?))),
            None => Ok((token(p)?.to_ascii_lowercase(), None)),
        })
        .collect::<Result<_, _>>()?;
    Ok(Extension { name, params })
}

/// Parses every Sec-WebSocket-Extensions header value, in order, into the extensions it
/// lists. Empty list elements are skipped; a malformed one yields `Err` in its place.
pub fn parse(values: &[String]) -> Vec<Result<Extension, MalformedExtension>> {
    let mut out = Vec::new();
    for v in values {
        match split_unquoted(v, ',') {
            Ok(items) => out.extend(
                items
                    .into_iter()
                    .filter(|i| !i.trim().is_empty())
                    .map(extension),
            ),
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Vec<Result<Extension, MalformedExtension>> {
        parse(&[s.to_owned()])
    }

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Result<Extension, MalformedExtension> {
        Ok(Extension {
            name: name.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
        })
    }

    #[test]
    fn offers_in_order_across_headers() {
        let got = parse(&[
            "permessage-deflate; client_max_window_bits, permessage-deflate".to_owned(),
            "x-other;a=1;b=\"two\"".to_owned(),
        ]);
        assert_eq!(
            got,
            vec![
                ext("permessage-deflate", &[("client_max_window_bits", None)]),
                ext("permessage-deflate", &[]),
                ext("x-other", &[("a", Some("1")), ("b", Some("two"))]),
            ]
        );
    }

    #[test]
    fn whitespace_and_case_of_param_names() {
        assert_eq!(
            one("permessage-deflate ;  Server_Max_Window_Bits = 10 ; CLIENT_NO_CONTEXT_TAKEOVER"),
            vec![ext(
                "permessage-deflate",
                &[
                    ("server_max_window_bits", Some("10")),
                    ("client_no_context_takeover", None)
                ]
            )]
        );
    }

    #[test]
    fn quoted_value_with_comma_does_not_split_the_list() {
        let got = one("a; p=\"x\", b");
        assert_eq!(got, vec![ext("a", &[("p", Some("x"))]), ext("b", &[])]);
        // a quoted value holding a separator is not a token: that extension is malformed
        assert_eq!(
            one("a; p=\"x,y\", b"),
            vec![Err(MalformedExtension), ext("b", &[])]
        );
    }

    #[test]
    fn malformed_extensions_are_reported_in_place() {
        assert_eq!(
            one("permessage-deflate; =1, good, bad name, also; p=\"unterminated"),
            vec![Err(MalformedExtension)]
        );
        assert_eq!(
            one("permessage-deflate; =1, good, bad name"),
            vec![
                Err(MalformedExtension),
                ext("good", &[]),
                Err(MalformedExtension)
            ]
        );
    }

    #[test]
    fn empty_elements_are_skipped() {
        assert_eq!(one(" , a ,, "), vec![ext("a", &[])]);
        assert!(one("").is_empty());
    }
}
