//! An input's body and the read sizes it arrives in, both chosen by the fuzzer.
//!
//! Layout: byte 0's low four bits give `n`; the next `n` bytes are read sizes (a byte `b`
//! is a read of `b + 1` bytes, used in turn and cycled); the rest is the body. `n = 0`
//! delivers the body in one read. Seeds can thus be written by hand: a leading `0x00`
//! followed by the bytes on the wire.

/// A body and the sizes of the reads that deliver it.
#[derive(Debug, Clone, Copy)]
pub struct Reads<'a> {
    sizes: &'a [u8],
    body: &'a [u8],
}

impl<'a> Reads<'a> {
    /// Splits `data` per the layout above; a short input has fewer sizes, or none.
    pub fn parse(data: &'a [u8]) -> Self {
        let Some((&first, rest)) = data.split_first() else {
            return Self {
                sizes: &[],
                body: &[],
            };
        };
        let n = usize::from(first & 0x0f).min(rest.len());
        let (sizes, body) = rest.split_at(n);
        Self { sizes, body }
    }

    /// The bytes delivered, whole.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The body cut into reads (none for an empty body).
    pub fn chunks(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut body = self.body;
        let mut sizes = self.sizes.iter().cycle();
        std::iter::from_fn(move || {
            if body.is_empty() {
                return None;
            }
            let size = sizes.next().map_or(body.len(), |&b| usize::from(b) + 1);
            let (chunk, rest) = body.split_at(size.min(body.len()));
            body = rest;
            Some(chunk)
        })
    }
}
