//! Message content: the DATA reader (dot-unstuffing, end of data) and the
//! body rules shared with BDAT. PURE.
//!
//! Rules (DESIGN "Rules that are never traded away"):
//! - DATA ends only at `CRLF.CRLF` (RFC 5321 §4.1.1.4). A bare LF never
//!   starts a line for the end-of-data or dot-unstuffing rules, so no byte
//!   sequence (`\n.\n`, `\r\n.\n`, `\n.\r\n`, `\r.\r\n`, ...) can end a DATA
//!   early and smuggle a second message (CVE-2023-51764 class).
//! - Bare CR or bare LF in the content is refused (RFC 5321 §2.3.8), or,
//!   when `normalize` is on, turned into CRLF. Either way what is stored has
//!   CRLF line endings only, so it cannot smuggle anything upstream either.
//! - The size cap is enforced while reading: past it nothing more is kept,
//!   the rest is read and dropped until the end, then the message is refused.
//! - Text lines are at most 998 octets (RFC 5322 §2.1.1).

/// RFC 5322 §2.1.1: at most 998 characters per line, excluding CRLF.
pub const MAX_TEXT_LINE: usize = 998;

/// Why a message body was refused (after reading it to its end).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("message larger than {max} octets")]
    TooBig { max: usize },
    #[error("bare LF in message data")]
    BareLf,
    #[error("bare CR in message data")]
    BareCr,
    #[error("text line longer than {max} octets")]
    LineTooLong { max: usize },
    /// The node's memory budget for message content was spent while this
    /// message was received (see `smtp::budget`): a temporary refusal.
    #[error("memory budget for message content exhausted")]
    MemoryBudget,
}

/// The message content being received, with its caps. Holds at most
/// `max_size` octets.
#[derive(Debug)]
pub struct Body {
    buf: Vec<u8>,
    max_size: usize,
    normalize: bool,
    pending_cr: bool,
    line_len: usize,
    error: Option<DataError>,
}

impl Body {
    /// An empty body holding at most `max_size` octets; `normalize` turns
    /// bare CR/LF into CRLF instead of refusing the message.
    pub fn new(max_size: usize, normalize: bool) -> Self {
        Body {
            buf: Vec::new(),
            max_size,
            normalize,
            pending_cr: false,
            line_len: 0,
            error: None,
        }
    }

    /// Reserves room for the `SIZE=` the client declared (RFC 1870), capped
    /// at the limit, so a large message is received into one allocation
    /// instead of a doubling series of copies. Untouched room costs address
    /// space, not memory.
    pub fn expecting(mut self, declared: Option<usize>) -> Self {
        if let Some(n) = declared {
            self.buf.reserve_exact(n.min(self.max_size));
        }
        self
    }

    /// Octets kept so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has been kept yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether the body is already refused (more input is only drained).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Octets of memory the body's buffer holds (its capacity), what a
    /// memory budget must cover.
    pub fn reserved(&self) -> usize {
        self.buf.capacity()
    }

    /// Refuses the message with `e` from now on: the buffer is freed, the
    /// rest of the content is read and dropped, and [`Body::finish`] returns
    /// `e` (unless an earlier error stands).
    pub fn refuse(&mut self, e: DataError) {
        self.fail(e);
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
            self.buf = Vec::new();
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.buf.len() + bytes.len() > self.max_size {
            self.fail(DataError::TooBig { max: self.max_size });
            return;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(bytes.len().max(4096).min(self.max_size));
        }
        self.buf.extend_from_slice(bytes);
    }

    fn line_break(&mut self) {
        self.emit(b"\r\n");
        self.line_len = 0;
    }

    fn bare(&mut self, e: DataError) {
        if self.normalize {
            self.line_break();
        } else {
            self.fail(e);
        }
    }

    /// Appends content octets (already dot-unstuffed).
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    self.line_break();
                    continue;
                }
                self.bare(DataError::BareCr);
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => self.bare(DataError::BareLf),
                _ => {
                    self.line_len += 1;
                    if self.line_len > MAX_TEXT_LINE {
                        self.fail(DataError::LineTooLong { max: MAX_TEXT_LINE });
                    }
                    self.emit(&[b]);
                }
            }
        }
    }

    /// The complete body, or why it is refused.
    pub fn finish(mut self) -> Result<Vec<u8>, DataError> {
        if self.pending_cr {
            self.pending_cr = false;
            self.bare(DataError::BareCr);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.buf),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After a real CRLF (or right after the DATA command's CRLF).
    LineStart,
    /// `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line (also after a bare LF: it never starts a line).
    Mid,
    /// CR inside a line.
    Cr,
}

/// The DATA reader: feed it what arrives after `354`; it reports how much
/// it consumed and, at `CRLF.CRLF`, the body (or why it is refused).
#[derive(Debug)]
pub struct DataReader {
    state: State,
    body: Body,
}

impl DataReader {
    /// A reader keeping at most `max_size` octets of content.
    pub fn new(max_size: usize, normalize: bool) -> Self {
        DataReader {
            state: State::LineStart,
            body: Body::new(max_size, normalize),
        }
    }

    /// See [`Body::expecting`].
    pub fn expecting(mut self, declared: Option<usize>) -> Self {
        self.body = self.body.expecting(declared);
        self
    }

    /// The body being received (to check or refuse it between feeds).
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Consumes from `input` up to and including the end-of-data marker.
    /// Returns the number of octets consumed and, when the end was found,
    /// the result; bytes after the marker are left for the caller.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<Vec<u8>, DataError>>) {
        let mut start = 0; // start of a run of bytes passed through unchanged
        for (i, &b) in input.iter().enumerate() {
            match self.state {
                State::LineStart if b == b'.' => {
                    self.body.push(&input[start..i]);
                    start = i + 1;
                    self.state = State::Dot;
                }
                State::Dot if b == b'\r' => {
                    start = i + 1;
                    self.state = State::DotCr;
                }
                State::DotCr if b == b'\n' => {
                    // RFC 5321 §4.1.1.4: CRLF "." CRLF ends the mail data.
                    let body = std::mem::replace(&mut self.body, Body::new(0, false));
                    return (i + 1, Some(body.finish()));
                }
                State::DotCr => {
                    // ".\r" then something else: the dot was stuffing, the
                    // CR is content (a bare CR unless this is... never LF).
                    self.body.push(b"\r");
                    start = i;
                    self.state = next_mid(b);
                }
                // RFC 5321 §4.5.2: a leading dot followed by more text is
                // removed; the byte after it is ordinary content.
                State::Dot => {
                    start = i;
                    self.state = next_mid(b);
                }
                State::Cr if b == b'\n' => self.state = State::LineStart,
                State::LineStart | State::Mid | State::Cr => self.state = next_mid(b),
            }
        }
        self.body.push(&input[start..]);
        (input.len(), None)
    }
}

fn next_mid(b: u8) -> State {
    if b == b'\r' {
        State::Cr
    } else {
        State::Mid
    }
}

/// One BDAT chunk being read (RFC 3030 §2): exactly `size` octets, no
/// dot-stuffing, into the transaction's [`Body`].
#[derive(Debug)]
pub struct BdatChunk {
    remaining: usize,
}

impl BdatChunk {
    /// A chunk of `size` octets.
    pub fn new(size: usize) -> Self {
        BdatChunk { remaining: size }
    }

    /// Moves up to the rest of the chunk from `input` into `body`; returns
    /// octets consumed and whether the chunk is complete.
    pub fn feed(&mut self, input: &[u8], body: &mut Body) -> (usize, bool) {
        let n = input.len().min(self.remaining);
        body.push(&input[..n]);
        self.remaining -= n;
        (n, self.remaining == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The result and the octets left after the end marker.
    type Outcome = (Result<Vec<u8>, DataError>, Vec<u8>);

    /// Feeds `input` in pieces of `step` octets; returns the result and the
    /// octets left after the end marker.
    fn read(input: &[u8], step: usize, max: usize, normalize: bool) -> Option<Outcome> {
        let mut r = DataReader::new(max, normalize);
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let (n, done) = r.feed(&input[pos..end]);
            pos += n;
            if let Some(res) = done {
                return Some((res, input[pos..].to_vec()));
            }
        }
        None
    }

    fn all_steps(input: &[u8], normalize: bool) -> Option<Outcome> {
        let whole = read(input, input.len().max(1), 1 << 20, normalize);
        for step in 1..8 {
            assert_eq!(read(input, step, 1 << 20, normalize), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn simple_message_and_trailing_pipelined_command() {
        let (res, rest) = all_steps(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", false).unwrap();
        assert_eq!(res.unwrap(), b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn empty_message_ends_at_first_dot_line() {
        let (res, rest) = all_steps(b".\r\n", false).unwrap();
        assert_eq!(res.unwrap(), b"");
        assert!(rest.is_empty());
    }

    #[test]
    fn dot_unstuffing() {
        let (res, _) = all_steps(b"..leading\r\n...\r\n.x\r\nmid.dot\r\n.\r\n", false).unwrap();
        assert_eq!(res.unwrap(), b".leading\r\n..\r\nx\r\nmid.dot\r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        // Each of these would end DATA in some lenient server. Here none
        // ends it: the reader still wants input (and, default mode, the
        // message is refused when it does end).
        for seq in [
            &b"a\n.\nMAIL FROM:<x@y.z>\r\n"[..],
            b"a\r\n.\nMAIL FROM:<x@y.z>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y.z>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y.z>\r\n",
            b"a\r\n.\r.\r\n",
            b"a\r.\rMAIL\r\n",
            b"a\r\r\n.\n\r\n",
            b"a\n\r.\r\n",
            b"a\r\n\x00.\r\n",
            b"a\r\n .\r\n",
        ] {
            for normalize in [false, true] {
                assert!(
                    all_steps(seq, normalize).is_none(),
                    "{seq:?} ended DATA (normalize={normalize})"
                );
            }
            let mut full = seq.to_vec();
            full.extend_from_slice(b"\r\n.\r\n");
            let (res, rest) = all_steps(&full, false).unwrap();
            assert!(rest.is_empty(), "{seq:?}: one DATA, one message");
            // Default mode: a bare CR/LF refuses the whole message.
            assert_eq!(res.is_err(), has_bare(seq), "{seq:?}");
            let (res, rest) = all_steps(&full, true).unwrap();
            assert!(rest.is_empty());
            let body = res.unwrap();
            assert!(
                !has_bare(&body),
                "{seq:?}: normalised body keeps a bare CR/LF"
            );
        }
    }

    fn has_bare(b: &[u8]) -> bool {
        b.iter().enumerate().any(|(i, &c)| {
            (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
                || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
        })
    }

    #[test]
    fn bare_lf_and_cr_refused_by_default() {
        let (res, _) = all_steps(b"a\nb\r\n.\r\n", false).unwrap();
        assert_eq!(res, Err(DataError::BareLf));
        let (res, _) = all_steps(b"a\rb\r\n.\r\n", false).unwrap();
        assert_eq!(res, Err(DataError::BareCr));
    }

    #[test]
    fn normalize_turns_bare_endings_into_crlf() {
        let (res, _) = all_steps(b"a\nb\rc\r\n.\r\n", true).unwrap();
        assert_eq!(res.unwrap(), b"a\r\nb\r\nc\r\n");
        // A bare LF never starts a line: this dot is content, not stuffing.
        let (res, _) = all_steps(b"a\n.\nb\r\n.\r\n", true).unwrap();
        assert_eq!(res.unwrap(), b"a\r\n.\r\nb\r\n");
    }

    #[test]
    fn size_cap_enforced_while_reading() {
        let mut input = b"x".repeat(50);
        input.extend_from_slice(b"\r\n");
        input.extend(b"y".repeat(100).iter());
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (res, rest) = read(&input, 7, 60, false).unwrap();
        assert_eq!(res, Err(DataError::TooBig { max: 60 }));
        assert_eq!(rest, b"NOOP\r\n");
        let (ok, _) = read(b"12345678\r\n.\r\n", 3, 10, false).unwrap();
        assert_eq!(ok.unwrap(), b"12345678\r\n");
        let (too, _) = read(b"123456789\r\n.\r\n", 3, 10, false).unwrap();
        assert!(too.is_err());
    }

    #[test]
    fn text_line_cap() {
        let mut ok = b"a".repeat(998);
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(all_steps(&ok, false).unwrap().0.is_ok());
        let mut long = b"a".repeat(999);
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            all_steps(&long, false).unwrap().0,
            Err(DataError::LineTooLong { max: 998 })
        );
        // A stuffed dot does not count: 998 content octets after "..".
        let mut stuffed = b".".to_vec();
        stuffed.extend(b"a".repeat(998).iter());
        stuffed.extend_from_slice(b"\r\n.\r\n");
        assert!(all_steps(&stuffed, false).unwrap().0.is_ok());
    }

    #[test]
    fn bdat_chunks_share_the_body_rules() {
        let mut body = Body::new(100, false);
        let mut c = BdatChunk::new(6);
        assert_eq!(c.feed(b"ab\r", &mut body), (3, false));
        assert_eq!(c.feed(b"\ncdNOOP", &mut body), (3, true));
        let mut c = BdatChunk::new(3);
        assert_eq!(c.feed(b"e\r\n", &mut body), (3, true));
        assert_eq!(body.finish().unwrap(), b"ab\r\ncde\r\n");

        let mut body = Body::new(100, false);
        BdatChunk::new(4).feed(b"a\n.\n", &mut body);
        assert_eq!(body.finish(), Err(DataError::BareLf));
        let mut body = Body::new(100, false);
        BdatChunk::new(2).feed(b"a\r", &mut body);
        assert_eq!(body.finish(), Err(DataError::BareCr));
        let mut body = Body::new(4, false);
        BdatChunk::new(10).feed(b"0123456789", &mut body);
        assert_eq!(body.finish(), Err(DataError::TooBig { max: 4 }));
    }

    #[test]
    fn a_declared_size_is_received_into_one_allocation_capped_at_the_limit() {
        let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n";
        let message: Vec<u8> = line.repeat(1000); // 64,000 octets
        let mut r = DataReader::new(1 << 20, false).expecting(Some(message.len()));
        let before = r.body.buf.as_ptr();
        for chunk in message.chunks(4096) {
            assert_eq!(r.feed(chunk), (chunk.len(), None));
        }
        assert_eq!(r.body.buf.as_ptr(), before, "no reallocation");
        let (_, end) = r.feed(b".\r\n");
        assert_eq!(end.unwrap().unwrap(), message);

        // A declaration above the limit reserves the limit, not more.
        let big = Body::new(1000, false).expecting(Some(usize::MAX));
        assert!((1000..2000).contains(&big.buf.capacity()));
        assert_eq!(Body::new(1000, false).expecting(None).buf.capacity(), 0);
    }

    /// Random inputs over a small alphabet rich in CR, LF and dots: the
    /// result never depends on how the input is split, a body is never
    /// returned with a bare CR/LF, and the end is always a real CRLF.CRLF.
    #[test]
    fn random_inputs_are_split_independent_and_clean() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5321);
        let alphabet = b"\r\n.a";
        for _ in 0..3000 {
            let len = rng.gen_range(0..40);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            for normalize in [false, true] {
                let whole = read(&input, input.len().max(1), 1 << 20, normalize);
                let step = rng.gen_range(1..5);
                assert_eq!(read(&input, step, 1 << 20, normalize), whole, "{input:?}");
                if let Some((res, rest)) = whole {
                    let consumed = &input[..input.len() - rest.len()];
                    let ends_properly = consumed == b".\r\n" || consumed.ends_with(b"\r\n.\r\n");
                    assert!(ends_properly, "{input:?} ended at {consumed:?}");
                    if let Ok(body) = res {
                        assert!(!has_bare(&body), "{input:?} -> {body:?}");
                    }
                }
            }
        }
    }
}
