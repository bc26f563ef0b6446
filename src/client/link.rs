//! The connection to a leader of another process: connecting with a deadline, the handshake,
//! frames in and out, and noticing that the leader went away (the socket closes); the backoff
//! between attempts; the wake-up pipe that the sender's `poll()` sleeps on.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::protocol::{self, Batch, Hello, LeaderMessage};
use crate::workdir::WorkDir;

/// Borrowed twin of [`protocol::ClientMessage`]: same variant names, same CBOR, no clone to send.
#[derive(Serialize)]
pub(super) enum ClientMessageRef<'a> {
    Hello(&'a Hello),
}

/// A connection to the leader of another process.
pub(super) struct Connection {
    /// Declared first so that it is dropped (unregistered) before `stream` closes.
    _fork_guard: Option<crate::fork::Registered>,
    stream: UnixStream,
    buf: Vec<u8>,
    pub(super) leader_pid: u32,
    /// The protocol the leader's `Welcome` named: batches are written in it.
    pub(super) dialect: u32,
}

/// Why connecting failed.
pub(super) enum ConnectError {
    /// The leader refused us (protocol): retrying will not help.
    Refused(String),
    /// The leader steps down for us (we run a newer library): take the lock.
    HandingOver(String),
    Other(anyhow::Error),
}

impl Connection {
    /// Bounds every later read and write by `timeout`.
    pub(super) fn set_io_timeout(&self, timeout: Duration) {
        let _ = self.stream.set_read_timeout(Some(timeout));
        let _ = self.stream.set_write_timeout(Some(timeout));
    }

    pub(super) fn open(
        workdir: &WorkDir,
        hello: &Hello,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let path = workdir.socket_path();
        let stream = connect(&path, timeout)
            .with_context(|| format!("cannot connect to {}", path.display()))
            .map_err(ConnectError::Other)?;
        let mut conn = Connection {
            _fork_guard: None,
            stream,
            buf: Vec::new(),
            leader_pid: 0,
            dialect: protocol::OLDEST_PROTOCOL,
        };
        conn._fork_guard = conn.raw_fd().map(crate::fork::Registered::new);
        conn.write(&ClientMessageRef::Hello(hello))
            .map_err(ConnectError::Other)?;
        match conn.read().map_err(ConnectError::Other)? {
            LeaderMessage::Welcome {
                leader_pid,
                protocol_version,
                ..
            } => {
                if !(protocol::OLDEST_PROTOCOL..=protocol::PROTOCOL_VERSION)
                    .contains(&protocol_version)
                {
                    return Err(ConnectError::Other(anyhow!(
                        "the leader welcomed us in protocol {protocol_version}, which this library does not speak"
                    )));
                }
                conn.leader_pid = leader_pid;
                conn.dialect = protocol_version;
                Ok(conn)
            }
            LeaderMessage::Refused { reason } => Err(ConnectError::Refused(reason)),
            LeaderMessage::HandingOver { reason } => Err(ConnectError::HandingOver(reason)),
            other => Err(ConnectError::Other(anyhow!(
                "unexpected answer to the handshake: {other:?}"
            ))),
        }
    }

    pub(super) fn write(&mut self, message: &ClientMessageRef<'_>) -> Result<()> {
        let frame = protocol::encode(message)?;
        self.stream
            .write_all(&frame)
            .context("cannot write to the leader")
    }

    pub(super) fn read(&mut self) -> Result<LeaderMessage> {
        loop {
            if let Some((message, used)) = protocol::decode::<LeaderMessage>(&self.buf)? {
                self.buf.drain(..used);
                return Ok(message);
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .context("cannot read from the leader")?;
            if n == 0 {
                bail!("the leader closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub(super) fn raw_fd(&self) -> Option<RawFd> {
        Some(self.stream.as_fd().as_raw_fd())
    }

    /// Whether the leader closed the connection (checked without blocking or consuming data).
    pub(super) fn is_closed(&self) -> bool {
        let Some(fd) = self.raw_fd() else {
            return false;
        };
        let mut byte = 0u8;
        // SAFETY: fd is our open socket; the buffer is one valid byte; MSG_PEEK consumes nothing.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return true;
        }
        n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
    }

    /// Sends a batch and waits for its acknowledgement.
    pub(super) fn send(&mut self, batch: &Batch) -> Result<()> {
        let frame = protocol::encode_batch(batch, self.dialect)?;
        self.stream
            .write_all(&frame)
            .context("cannot write to the leader")?;
        loop {
            match self.read()? {
                LeaderMessage::Ack { seq } if seq == batch.seq => return Ok(()),
                LeaderMessage::Ack { .. } => continue,
                LeaderMessage::Refused { reason } => bail!("the leader refused a batch: {reason}"),
                LeaderMessage::Welcome { .. } => bail!("unexpected second welcome"),
                LeaderMessage::HandingOver { reason } => bail!("the leader hands over: {reason}"),
            }
        }
    }
}

/// Connects to the Unix socket at `path`, waiting at most `timeout` (also for room in a full
/// backlog: a Unix socket's `connect` waits for the send timeout), which then also bounds every
/// read and write.
pub(super) fn connect(path: &std::path::Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    // connect() follows links: never connect through one planted at agent.socket.
    if !crate::workdir::is_socket_not_link(path) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a socket (missing, or a link)", path.display()),
        ));
    }
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: creating a socket has no preconditions.
    #[cfg(target_os = "linux")]
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    // No SOCK_CLOEXEC: FD_CLOEXEC is set right after (a fork+exec in between leaks the descriptor
    // to that program; std has the same window on these systems).
    // SAFETY: creating a socket has no preconditions.
    #[cfg(not(target_os = "linux"))]
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that we alone own; the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    #[cfg(not(target_os = "linux"))]
    set_cloexec(fd)?;
    // A leader that has gone must not raise SIGPIPE in this app process.
    #[cfg(target_vendor = "apple")]
    crate::workdir::set_no_sigpipe(fd)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // The path and its NUL (macOS has a length byte before the family: the offset is not the
    // family's size there).
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un of which `len` bytes are used; fd is our socket.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Exponential backoff with jitter.
pub(super) struct Backoff {
    delay: Duration,
    rng: u64,
}

impl Backoff {
    pub(super) const MIN: Duration = Duration::from_millis(5);
    pub(super) const MAX: Duration = Duration::from_secs(1);

    pub(super) fn new(seed: u64) -> Self {
        Backoff {
            delay: Self::MIN,
            rng: seed | 1,
        }
    }

    pub(super) fn reset(&mut self) {
        self.delay = Self::MIN;
    }

    /// Whether no wait was taken since the last reset.
    pub(super) fn is_reset(&self) -> bool {
        self.delay == Self::MIN
    }

    /// The next wait: the current delay ±25 %, then the delay doubles.
    pub(super) fn next(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.delay.as_micros() as u64;
        let jitter = self.rng % (base / 2 + 1);
        self.delay = (self.delay * 2).min(Self::MAX);
        Duration::from_micros(base - base / 4 + jitter)
    }
}

/// A pipe whose only job is to wake the sender's `poll()`.
pub(super) struct WakePipe {
    _fork_guards: [crate::fork::Registered; 2],
    read: OwnedFd,
    write: OwnedFd,
}

impl WakePipe {
    pub(super) fn new() -> Result<WakePipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        #[cfg(target_os = "linux")]
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        // No pipe2: the flags are set right after (see `connect` for the close-on-exec window).
        // SAFETY: fds has room for the two descriptors pipe writes.
        #[cfg(not(target_os = "linux"))]
        let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot create the sender's wake-up pipe");
        }
        // SAFETY: the call succeeded, so both are fresh descriptors that we alone own.
        let pipe = unsafe {
            WakePipe {
                _fork_guards: [
                    crate::fork::Registered::new(fds[0]),
                    crate::fork::Registered::new(fds[1]),
                ],
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        #[cfg(not(target_os = "linux"))]
        for fd in [pipe.read.as_raw_fd(), pipe.write.as_raw_fd()] {
            set_cloexec(fd)
                .and_then(|()| set_nonblocking(fd))
                .context("cannot set up the sender's wake-up pipe")?;
        }
        Ok(pipe)
    }

    pub(super) fn wake(&self) {
        // SAFETY: writing one byte from a valid buffer to our pipe; a full pipe (EAGAIN) is fine.
        unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    pub(super) fn drain(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a valid buffer from our non-blocking pipe until it is empty.
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
        }
    }
}

/// `FD_CLOEXEC` on `fd`, where descriptors cannot be created with it (no `SOCK_CLOEXEC`, `pipe2`).
#[cfg(not(target_os = "linux"))]
fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFD/F_SETFD take and return plain flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `O_NONBLOCK` on `fd` (see [`set_cloexec`]).
#[cfg(not(target_os = "linux"))]
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and return plain flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl crate::metrics::Wake for WakePipe {
    fn wake(&self) {
        WakePipe::wake(self);
    }
}

/// Sleeps until `timeout` (none: no timeout), a wake-up, or activity (data or hang-up) on `conn`.
/// Returns whether `conn` showed activity.
pub(super) fn sleep_on(pipe: &WakePipe, conn: Option<RawFd>, timeout: Option<Duration>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: pipe.read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: conn.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: fds is a valid array of 2 pollfd; a negative fd is ignored by poll.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if n > 0 && fds[0].revents != 0 {
        pipe.drain();
    }
    n > 0 && conn.is_some() && fds[1].revents != 0
}
