//! Incremental UTF-8 validation for text messages that arrive in fragments and reads.
//!
//! Invalid bytes fail in the call that feeds them (fail fast: a peer learns of its bad
//! text before it finishes sending the message). A code point split across calls is
//! carried over in at most three bytes; a message that ends inside one is invalid.
//! Validation runs on simdutf8, whose `compat` API tells an invalid sequence (`error_len`
//! is `Some`) apart from one merely cut short at the end of the input (`None`).

use simdutf8::compat::from_utf8;

/// The input is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Validates a text message fed piece by piece.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The start of a code point cut off at the end of the last piece.
    partial: [u8; 4],
    partial_len: u8,
}

/// The length of the sequence a lead byte starts (1 for invalid lead bytes: the
/// validator reports those itself).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of the message.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            let have = usize::from(self.partial_len);
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(input.len());
            let mut joined = self.partial;
            joined[have..have + take].copy_from_slice(&input[..take]);
            let joined = &joined[..have + take];
            match from_utf8(joined) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.partial[..joined.len()].copy_from_slice(joined);
                    self.partial_len = joined.len() as u8;
                    return Ok(());
                }
                Err(_) => return Err(Utf8Error),
            }
            input = &input[take..];
        }
        match from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &input[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// Ends the message: it must not stop inside a code point. Resets for the next one.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete { Ok(()) } else { Err(Utf8Error) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &end in cuts.iter().chain([bytes.len()].iter()) {
            v.feed(&bytes[start..end])?;
            start = end;
        }
        v.finish()
    }

    #[test]
    fn code_point_split_at_every_offset_passes() {
        let text = "κόσμε 𝄞 €uro ✓".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(validate_in_pieces(text, &[a, b]), Ok(()), "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_passes() {
        let text = "héllo wörld 𝄞".as_bytes();
        let cuts: Vec<usize> = (1..text.len()).collect();
        assert_eq!(validate_in_pieces(text, &cuts), Ok(()));
    }

    #[test]
    fn invalid_bytes_fail_in_the_piece_that_holds_them() {
        // Autobahn 6.4.1: valid prefix, then a code point above U+10FFFF.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert_eq!(v.feed(&[0xF4, 0x90, 0x80, 0x80]), Err(Utf8Error));
    }

    #[test]
    fn truncated_invalid_prefix_fails_before_the_rest_arrives() {
        // 0xF4 0x90 can never start a valid sequence: fail on the second byte already.
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xF4]).is_ok());
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error));
    }

    #[test]
    fn message_ending_inside_a_code_point_fails() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xE2, 0x82]).is_ok());
        assert_eq!(v.finish(), Err(Utf8Error));
        // and the validator is ready for the next message
        assert!(v.feed(b"ok").is_ok());
        assert!(v.finish().is_ok());
    }

    #[test]
    fn surrogates_and_overlongs_fail() {
        for bad in [
            &[0xED, 0xA0, 0x80][..],
            &[0xC0, 0xAF],
            &[0xE0, 0x80, 0xAF],
            &[0xFF],
        ] {
            assert!(validate_in_pieces(bad, &[]).is_err(), "{bad:?}");
            assert!(validate_in_pieces(bad, &[1]).is_err(), "{bad:?} split");
        }
    }

    proptest! {
        #[test]
        fn agrees_with_std_for_any_split(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(
                validate_in_pieces(&bytes, &cuts).is_ok(),
                std::str::from_utf8(&bytes).is_ok()
            );
        }

        #[test]
        fn valid_strings_pass_for_any_split(
            s in "\\PC{0,40}",
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let bytes = s.as_bytes();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert!(validate_in_pieces(bytes, &cuts).is_ok());
        }
    }
}
