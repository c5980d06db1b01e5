//! pkt-lines in and out (gix-packetline), and the side-band that multiplexes
//! pack data, progress and errors onto one stream.

use std::io::{self, Read, Write};

use gix_packetline::blocking_io::{StreamingPeekableIter, encode};
use gix_packetline::{Channel, PacketLineRef};

use crate::Error;

/// One pkt-line as the protocol sees it. Text lines lose their trailing `\n`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pkt {
    Line(Vec<u8>),
    Flush,
    Delim,
    End,
}

/// Reads pkt-lines, never past the line asked for (a pack may follow).
pub(crate) struct PktReader<R: Read> {
    lines: StreamingPeekableIter<R>,
}

impl<R: Read> PktReader<R> {
    pub(crate) fn new(read: R) -> Self {
        PktReader {
            lines: StreamingPeekableIter::new(read, &[], false),
        }
    }

    /// The next pkt-line, or `None` when the client hung up between lines.
    pub(crate) fn next(&mut self) -> Result<Option<Pkt>, Error> {
        match self.lines.read_line() {
            None => Ok(None),
            Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Some(Err(e)) => Err(Error::Io(e)),
            Some(Ok(Err(e))) => Err(Error::Protocol(format!("malformed pkt-line: {e}"))),
            Some(Ok(Ok(line))) => Ok(Some(match line {
                PacketLineRef::Data(d) => Pkt::Line(d.strip_suffix(b"\n").unwrap_or(d).to_vec()),
                PacketLineRef::Flush => Pkt::Flush,
                PacketLineRef::Delimiter => Pkt::Delim,
                PacketLineRef::ResponseEnd => Pkt::End,
            })),
        }
    }

    /// The next pkt-line; the client hanging up here is an error.
    pub(crate) fn expect(&mut self, during: &str) -> Result<Pkt, Error> {
        self.next()?
            .ok_or_else(|| Error::Protocol(format!("the client hung up during {during}")))
    }

    /// The stream itself, for the raw pack that follows the commands of a push.
    pub(crate) fn raw(&mut self) -> &mut R {
        self.lines.inner_mut()
    }
}

/// One text line; gix-packetline adds the `\n` (a trailing one given here
/// is not doubled).
pub(crate) fn text(out: &mut impl Write, line: &str) -> io::Result<()> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    encode::text_to_write(line.as_bytes(), out).map(drop)
}

pub(crate) fn flush(out: &mut impl Write) -> io::Result<()> {
    encode::flush_to_write(&mut *out)?;
    out.flush()
}

pub(crate) fn delim(out: &mut impl Write) -> io::Result<()> {
    encode::delim_to_write(out).map(drop)
}

/// How the server's pack and messages reach the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Band {
    /// Pack bytes raw; progress is dropped, errors go as an `ERR` line.
    None,
    /// `side-band`: 1000-byte packets.
    Small,
    /// `side-band-64k`.
    Large,
}

/// A writer that frames what it is given as side-band data (or passes it
/// through raw), plus progress and error messages.
pub(crate) struct SideBand<W: Write> {
    out: W,
    band: Band,
    progress: bool,
}

impl<W: Write> SideBand<W> {
    pub(crate) fn new(out: W, band: Band, progress: bool) -> Self {
        SideBand { out, band, progress }
    }

    fn max(&self) -> usize {
        match self.band {
            Band::Small => 999,
            _ => 65515,
        }
    }

    /// A progress message (`\r` or `\n` terminated), if progress is wanted.
    pub(crate) fn progress(&mut self, msg: &str) -> io::Result<()> {
        if self.band == Band::None || !self.progress {
            return Ok(());
        }
        encode::band_to_write(Channel::Progress, msg.as_bytes(), &mut self.out)?;
        self.out.flush()
    }

    /// A fatal error the client shows as `remote: error: …`.
    pub(crate) fn error(&mut self, msg: &str) -> io::Result<()> {
        match self.band {
            Band::None => encode::error_to_write(msg.as_bytes(), &mut self.out).map(drop),
            _ => encode::band_to_write(Channel::Error, format!("error: {msg}\n").as_bytes(), &mut self.out).map(drop),
        }?;
        self.out.flush()
    }

    pub(crate) fn inner(&mut self) -> &mut W {
        &mut self.out
    }
}

impl<W: Write> Write for SideBand<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.band == Band::None {
            return self.out.write(buf);
        }
        let n = buf.len().min(self.max());
        encode::band_to_write(Channel::Data, &buf[..n], &mut self.out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
