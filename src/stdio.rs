//! The standard streams and working directory a command runs with: this
//! process's own, or the ones a client of the node's socket handed over
//! (`node.rs`). Commands write through here, never to the process's
//! stdout, so the same code serves both and prints the same bytes.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};

pub(crate) struct Stdio {
    cwd: PathBuf,
    stdin: File,
    out: Mutex<BufWriter<Cut>>,
    err: Cut,
    err_tty: bool,
    gone: Arc<AtomicBool>,
}

/// A stream that fails once the client it belongs to has gone, so a
/// command run for a client that was killed stops writing to a terminal
/// nobody reads any more.
pub(crate) struct Cut {
    file: File,
    gone: Arc<AtomicBool>,
}

impl Write for Cut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Stdio {
    /// This process's standard streams and working directory.
    pub(crate) fn process() -> Result<Stdio> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().context("duplicating a standard stream");
        let cwd = std::env::current_dir().context("the current directory")?;
        Ok(Stdio::new(
            cwd,
            [
                dup(std::io::stdin().as_fd())?,
                dup(std::io::stdout().as_fd())?,
                dup(std::io::stderr().as_fd())?,
            ],
            Arc::new(AtomicBool::new(false)),
        ))
    }

    /// Streams `[stdin, stdout, stderr]` of a client in `cwd`; `gone` is
    /// set when the client hangs up.
    pub(crate) fn new(cwd: PathBuf, [stdin, stdout, stderr]: [OwnedFd; 3], gone: Arc<AtomicBool>) -> Stdio {
        let err = File::from(stderr);
        Stdio {
            cwd,
            stdin: File::from(stdin),
            out: Mutex::new(BufWriter::with_capacity(
                64 << 10,
                Cut {
                    file: File::from(stdout),
                    gone: gone.clone(),
                },
            )),
            err_tty: err.is_terminal(),
            err: Cut {
                file: err,
                gone: gone.clone(),
            },
            gone,
        }
    }

    /// Standard output, buffered; flushed by `finish` (and by `watch` after
    /// each batch).
    pub(crate) fn out(&self) -> MutexGuard<'_, BufWriter<Cut>> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One line on standard error, after what standard output holds so far.
    pub(crate) fn warn(&self, line: std::fmt::Arguments<'_>) {
        self.out().flush().ok();
        let mut err = &self.err.file;
        if !self.gone() {
            writeln!(err, "alknet: {line}").ok();
        }
    }

    /// A local path as the client means it: relative to its directory.
    pub(crate) fn local(&self, path: impl AsRef<Path>) -> PathBuf {
        self.cwd.join(path)
    }

    /// Standard input, for async reads.
    pub(crate) fn stdin(&self) -> Result<tokio::fs::File> {
        Ok(tokio::fs::File::from_std(self.stdin.try_clone()?))
    }

    /// Standard output for async writes, after what is buffered.
    pub(crate) fn stdout(&self) -> Result<tokio::fs::File> {
        let mut out = self.out();
        out.flush()?;
        Ok(tokio::fs::File::from_std(out.get_ref().file.try_clone()?))
    }

    pub(crate) fn gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Whether standard error is a terminal (progress bars go there).
    pub(crate) fn err_tty(&self) -> bool {
        self.err_tty
    }

    /// A progress bar's view of standard error.
    pub(crate) fn term(&self) -> Result<Box<dyn indicatif::TermLike>> {
        Ok(Box::new(Term(Mutex::new(self.err.file.try_clone()?))))
    }

    /// Flushes standard output.
    pub(crate) fn finish(&self) -> std::io::Result<()> {
        self.out().flush()
    }
}

/// A terminal reached through a file descriptor, for indicatif.
#[derive(Debug)]
struct Term(Mutex<File>);

impl Term {
    fn put(&self, s: &str) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write_all(s.as_bytes())
    }
}

impl indicatif::TermLike for Term {
    fn width(&self) -> u16 {
        80
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            self.put(&format!("\x1b[{n}A"))
        }
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            self.put(&format!("\x1b[{n}B"))
        }
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            self.put(&format!("\x1b[{n}C"))
        }
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            self.put(&format!("\x1b[{n}D"))
        }
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(&format!("{s}\n"))
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.put("\r\x1b[2K")
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}
