//! The leader's side of `agent.socket`: one task per connection. Handshake (protocol check,
//! owner-only peer check, the client id bound to the connection's process), then batches: each is
//! journaled and counted (on the blocking pool, so that a slow disk does not stall the other
//! connections) before its `Ack`. Every frame is untrusted; a bad one closes this connection only,
//! with a rate-limited log line, and is counted in the next payload.
//!
//! The rules a connection must follow (anything else closes it):
//! - it sends batches only for the client id it handshook with;
//! - that id is not bound to another live process (the peer-credential pid of the connection that
//!   first used it; see [`super::peers::Peers::bind`]);
//! - sequence numbers follow on: the first new batch of a connection may start anywhere above the
//!   last one counted for that client (a client may have dropped batches it could not hand over,
//!   which it counts in its drop counts), after that each new batch is exactly the next number;
//!   an already-counted one is acknowledged again without counting (a resend);
//! - a frame completes within [`FRAME_DEADLINE`] of its first byte, and frames larger than
//!   [`SMALL_FRAME_BYTES`] are buffered only within [`FRAME_BUDGET_BYTES`] across all connections;
//! - at most [`MAX_CONNECTIONS_PER_PROCESS`] connections per process, acks are read (a write that
//!   blocks for [`WRITE_TIMEOUT`] closes the connection).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::counting::Counting;
use super::peers::{Context, ProcessSlot, MAX_CONNECTIONS_PER_PROCESS};
use super::HANDSHAKE_TIMEOUT;
use crate::log::{suppressed_note, RateLimit};
use crate::protocol::{
    self, Batch, ClientMessage, FrameError, Handshake, Hello, LeaderMessage, HEADER_BYTES,
};

/// A peer's pid or uid as log lines name it: the number, or `unknown` when the socket's peer
/// credentials did not say (`pid 21840`, `pid unknown`; never Rust's `Some(21840)`).
struct Known<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Known<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(id) => id.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// Bytes buffered for incomplete frames larger than [`SMALL_FRAME_BYTES`], across all connections.
pub const FRAME_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// A frame up to this size is buffered without taking from the budget (connections are capped,
/// so these cost at most `MAX_CONNECTIONS` times this).
pub const SMALL_FRAME_BYTES: usize = 64 * 1024;
/// Longest time from a frame's first byte to its last.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// Longest time one answer may take to write (a peer that does not read its acks).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

static BAD_FRAME_LOG: RateLimit = RateLimit::new(10_000);
static RULE_LOG: RateLimit = RateLimit::new(10_000);
static BUDGET_LOG: RateLimit = RateLimit::new(10_000);
static SLOW_LOG: RateLimit = RateLimit::new(10_000);
static CAP_LOG: RateLimit = RateLimit::new(10_000);

/// Why reading a message failed.
enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
    TruncatedFrame,
    /// The frame did not complete within [`FRAME_DEADLINE`].
    TooSlow,
    /// Buffering the frame would exceed [`FRAME_BUDGET_BYTES`].
    OverBudget(usize),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read error: {e}"),
            ReadError::Frame(e) => write!(f, "{e}"),
            ReadError::TruncatedFrame => write!(f, "connection closed in the middle of a frame"),
            ReadError::TooSlow => write!(
                f,
                "a frame did not complete within {FRAME_DEADLINE:?} of its first byte"
            ),
            ReadError::OverBudget(n) => write!(
                f,
                "a frame of {n} bytes does not fit the {FRAME_BUDGET_BYTES}-byte budget for incomplete frames"
            ),
        }
    }
}

/// A connection's read buffer, charged to the leader-wide budget for incomplete frames.
struct FrameReader<'a> {
    buf: Vec<u8>,
    /// When the first byte of the frame in progress arrived.
    started: Option<Instant>,
    /// Bytes of the budget this connection holds.
    held: usize,
    budget: &'a AtomicUsize,
}

impl Drop for FrameReader<'_> {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.held, Ordering::AcqRel);
    }
}

impl<'a> FrameReader<'a> {
    fn new(budget: &'a AtomicUsize) -> Self {
        FrameReader {
            buf: Vec::new(),
            started: None,
            held: 0,
            budget,
        }
    }

    /// Makes room for a frame of `need` bytes (header included), from the budget if it is large.
    fn make_room(&mut self, need: usize) -> Result<(), ReadError> {
        if need > SMALL_FRAME_BYTES && need > self.held {
            let extra = need - self.held;
            let before = self.budget.fetch_add(extra, Ordering::AcqRel);
            if before + extra > FRAME_BUDGET_BYTES {
                self.budget.fetch_sub(extra, Ordering::AcqRel);
                return Err(ReadError::OverBudget(need));
            }
            self.held = need;
        }
        self.buf.reserve_exact(need.saturating_sub(self.buf.len()));
        Ok(())
    }

    /// A frame was taken out of the buffer: give back the budget and large buffers.
    fn frame_done(&mut self) {
        self.budget.fetch_sub(self.held, Ordering::AcqRel);
        self.held = 0;
        if self.buf.capacity() > SMALL_FRAME_BYTES {
            self.buf.shrink_to(self.buf.len().max(4096));
        }
        // Bytes of the next frame may be there already: its clock starts now.
        self.started = (!self.buf.is_empty()).then(Instant::now);
    }

    /// Reads the next message. `Ok(None)`: the peer closed cleanly between frames. Cancel-safe: a
    /// partial frame stays in the buffer.
    async fn read<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<ClientMessage>, ReadError> {
        loop {
            match protocol::decode::<ClientMessage>(&self.buf) {
                Ok(Some((message, used))) => {
                    self.buf.drain(..used);
                    self.frame_done();
                    return Ok(Some(message));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Frame(e)),
            }
            match protocol::body_len(&self.buf) {
                Ok(Some(len)) => self.make_room(HEADER_BYTES + len)?,
                Ok(None) => self.buf.reserve(HEADER_BYTES),
                Err(e) => return Err(ReadError::Frame(e)),
            }
            let read = reader.read_buf(&mut self.buf);
            let n = match self.started {
                Some(started) => tokio::time::timeout_at((started + FRAME_DEADLINE).into(), read)
                    .await
                    .map_err(|_| ReadError::TooSlow)?,
                None => read.await,
            }
            .map_err(ReadError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::TruncatedFrame)
                };
            }
            if self.started.is_none() {
                self.started = Some(Instant::now());
            }
        }
    }
}

async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &LeaderMessage,
) -> Result<()> {
    let frame = protocol::encode(message)?;
    tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&frame))
        .await
        .map_err(|_| anyhow!("the peer did not read for {WRITE_TIMEOUT:?}"))??;
    Ok(())
}

fn stream_fd(stream: &Stream) -> Option<std::os::fd::RawFd> {
    use std::os::fd::{AsFd, AsRawFd};
    #[allow(unreachable_patterns)]
    match stream {
        Stream::UdSocket(s) => Some(s.as_fd().as_raw_fd()),
        _ => None,
    }
}

/// The pid of the process that connected the Unix socket `fd` (`LOCAL_PEERPID`).
#[cfg(target_vendor = "apple")]
fn local_peer_pid(fd: std::os::fd::RawFd) -> Option<i32> {
    let mut pid: libc::pid_t = 0;
    let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
    // SAFETY: `fd` is the open socket of the stream being served; `pid` and `len` are valid for
    // writes and `len` is the size of `pid`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_LOCAL,
            libc::LOCAL_PEERPID,
            (&mut pid as *mut libc::pid_t).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::pid_t>()).then_some(pid)
}

/// How a connection ended, for the stopping leader's handover decision.
pub(super) enum Peer {
    /// The process closed the connection, said something invalid, or never completed the handshake.
    Left,
    /// The process was still connected when the leader stopped: it will take over.
    StillThere,
}

/// After the stop signal: did the peer already leave (its EOF is waiting), or is it still there?
async fn peer_after_stop<R: AsyncRead + Unpin>(
    reader: &mut R,
    frames: &mut FrameReader<'_>,
) -> Peer {
    match tokio::time::timeout(Duration::from_millis(5), frames.read(reader)).await {
        Ok(Ok(None)) | Ok(Err(_)) => Peer::Left,
        // A batch in flight (not acknowledged: the process keeps it), or silence: still there.
        Ok(Ok(Some(_))) => {
            tracing::debug!("stopping with a batch in flight from a connected process");
            Peer::StillThere
        }
        Err(_) => {
            tracing::debug!("stopping while a process is connected");
            Peer::StillThere
        }
    }
}

/// One use of a configuration by this connection; given back on drop.
struct ConfigUse<'a> {
    counting: &'a Counting,
    id: u64,
}

impl Drop for ConfigUse<'_> {
    fn drop(&mut self) {
        self.counting.release(self.id);
    }
}

/// Serves one connection: who it is, the handshake, its admission, then its batches.
pub(super) async fn serve(stream: Stream, ctx: &Arc<Context>, stop: watch::Receiver<bool>) -> Peer {
    // A forked child closes its copy, so that the client sees the hang-up when this process dies.
    let _fork_guard = stream_fd(&stream).map(crate::fork::Registered::new);
    let (peer_pid, peer_uid) = identify(&stream);
    if ctx.owner_only && !ours(peer_uid, peer_pid) {
        return Peer::Left;
    }
    let _slot = match peer_pid {
        Some(pid) => match take_slot(ctx, pid) {
            Some(slot) => Some(slot),
            None => return Peer::Left,
        },
        None => None,
    };
    // `&Stream` reads and writes; no split needed.
    let (mut reader, mut writer) = (&stream, &stream);
    let mut frames = FrameReader::new(ctx.peers.frame_budget());
    let Some((hello, dialect)) =
        handshake(ctx, &mut frames, &mut reader, &mut writer, peer_pid).await
    else {
        return Peer::Left;
    };
    let Some(admitted) = admit(ctx, &hello, dialect, &mut writer, peer_pid).await else {
        return Peer::Left;
    };
    receive_batches(ctx, &admitted, &mut frames, &mut reader, &mut writer, stop).await
}

/// The pid and uid of the peer, as far as its socket tells.
fn identify(stream: &Stream) -> (Option<i32>, Option<libc::uid_t>) {
    let creds = stream.peer_creds().ok();
    let peer_pid = creds.as_ref().and_then(|c| c.pid());
    // macOS's peer credentials (LOCAL_PEERCRED) carry the uid but no pid: that is LOCAL_PEERPID.
    #[cfg(target_vendor = "apple")]
    let peer_pid = peer_pid.or_else(|| stream_fd(stream).and_then(local_peer_pid));
    // A client that has gone must not raise SIGPIPE in this (the leader's) app process.
    #[cfg(target_vendor = "apple")]
    if let Some(Err(e)) = stream_fd(stream).map(crate::workdir::set_no_sigpipe) {
        tracing::debug!("cannot set SO_NOSIGPIPE on a connection: {e}");
    }
    let peer_uid = creds.as_ref().and_then(|c| c.euid());
    (peer_pid.filter(|p| *p > 0), peer_uid)
}

/// Owner-only mode: only processes of our own user may feed this leader.
fn ours(uid: Option<libc::uid_t>, peer_pid: Option<i32>) -> bool {
    let ours = crate::workdir::current_euid();
    if uid != Some(ours) {
        tracing::warn!(
            "refused a connection from uid {} (pid {}): owner-only mode accepts uid {ours} only",
            Known(uid),
            Known(peer_pid)
        );
        return false;
    }
    true
}

/// A connection slot of process `pid`; `None` (counted, logged) when it holds too many.
fn take_slot(ctx: &Context, pid: i32) -> Option<ProcessSlot<'_>> {
    let slot = ctx.peers.enter(pid);
    if slot.is_none() {
        ctx.tally.one(|c| &mut c.refused_connections);
        if let Some(n) = CAP_LOG.check() {
            tracing::warn!(
                "closed a connection of pid {pid}: it already holds {MAX_CONNECTIONS_PER_PROCESS} connections{}",
                suppressed_note(n)
            );
        }
    }
    slot
}

/// Reads the peer's `Hello` and checks its versions: `None` when the connection ends here (no
/// handshake, another protocol, or a newer library, for which this leader hands over).
async fn handshake(
    ctx: &Context,
    frames: &mut FrameReader<'_>,
    mut reader: &mut &Stream,
    writer: &mut &Stream,
    peer_pid: Option<i32>,
) -> Option<(Hello, u32)> {
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, frames.read(&mut reader)).await {
        Ok(Ok(Some(ClientMessage::Hello(hello)))) => hello,
        Ok(Ok(Some(ClientMessage::HelloVersions(v)))) => {
            // Only the versions are readable: enough to hand over to a newer client or refuse
            // an older one; a client this leader would serve must send a readable `Hello`.
            let newest = v.protocol.unwrap_or(v.protocol_version);
            match versions_decide(ctx, v.protocol_version, newest, &v.library_version, v.pid) {
                Ok(_) => reject(ctx, peer_pid, &v.reason),
                Err(answer) => answer_and_leave(ctx, writer, answer).await,
            }
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(ClientMessage::Batch(_)))) => {
            reject(ctx, peer_pid, "a batch before the handshake");
            return None;
        }
        Ok(Err(e)) => {
            read_failed(ctx, peer_pid, &e);
            return None;
        }
        Err(_) => {
            tracing::debug!(
                "connection from pid {} sent no handshake within {HANDSHAKE_TIMEOUT:?}",
                Known(peer_pid)
            );
            return None;
        }
    };
    let newest = hello.protocol.unwrap_or(hello.protocol_version);
    match versions_decide(
        ctx,
        hello.protocol_version,
        newest,
        &hello.library_version,
        hello.pid,
    ) {
        Ok(dialect) => Some((hello, dialect)),
        Err(answer) => {
            answer_and_leave(ctx, writer, answer).await;
            None
        }
    }
}

/// A connection past its handshake: whose batches it may send, under which configuration.
struct Admitted<'a> {
    /// The client id of its `Hello`, and as the journal knows it.
    client_id: u64,
    client: u64,
    pid: u32,
    peer_pid: Option<i32>,
    config: ConfigUse<'a>,
}

/// Binds the client id to the peer's process and registers its configuration, then welcomes it.
/// `None` (counted, logged) when the id is in use by another process or there is no room for
/// another configuration.
async fn admit<'a>(
    ctx: &'a Context,
    hello: &Hello,
    dialect: u32,
    mut writer: &mut &Stream,
    peer_pid: Option<i32>,
) -> Option<Admitted<'a>> {
    let client = protocol::journal_id(hello.client_id);
    if let Err(holder) = ctx.peers.bind(client, peer_pid) {
        refuse(
            ctx,
            peer_pid,
            &format!("its client id is in use by live pid {holder}"),
        );
        return None;
    }
    let Some(config_id) = ctx.counting.register(&hello.config) else {
        refuse(
            ctx,
            peer_pid,
            &format!(
                "{} configurations are in use already",
                crate::aggregate::MAX_CONFIGS
            ),
        );
        return None;
    };
    let config = ConfigUse {
        counting: &ctx.counting,
        id: config_id,
    };
    write_message(
        &mut writer,
        &LeaderMessage::Welcome {
            protocol_version: dialect,
            library_version: ctx.library_version.clone(),
            leader_pid: std::process::id(),
        },
    )
    .await
    .ok()?;
    tracing::debug!(
        "client pid {} (library {}) connected, speaking protocol {dialect}",
        hello.pid,
        hello.library_version
    );
    Some(Admitted {
        client_id: hello.client_id,
        client,
        pid: hello.pid,
        peer_pid,
        config,
    })
}

/// What to do after a batch.
enum Next {
    Read,
    /// Closed for breaking a rule.
    Close,
    /// The batch was not acknowledged: the process keeps it and is still there.
    StillThere,
}

/// Journals, counts and acknowledges batches until the peer leaves, breaks a rule, or the leader
/// stops.
async fn receive_batches(
    ctx: &Arc<Context>,
    admitted: &Admitted<'_>,
    frames: &mut FrameReader<'_>,
    mut reader: &mut &Stream,
    writer: &mut &Stream,
    mut stop: watch::Receiver<bool>,
) -> Peer {
    let peer_pid = admitted.peer_pid;
    // The seq the next new batch must have; `None` until the first new batch of this connection.
    let mut expected: Option<u64> = None;
    loop {
        if *stop.borrow() {
            return peer_after_stop(&mut reader, frames).await;
        }
        let message = tokio::select! {
            biased;
            _ = stop.changed() => None,
            message = frames.read(&mut reader) => Some(message),
        };
        let Some(message) = message else {
            return peer_after_stop(&mut reader, frames).await;
        };
        match message {
            Ok(Some(ClientMessage::Batch(batch))) => {
                match receive_batch(ctx, admitted, batch, &mut expected, writer).await {
                    Next::Read => {}
                    Next::Close => break,
                    Next::StillThere => return Peer::StillThere,
                }
            }
            Ok(Some(ClientMessage::Hello(_) | ClientMessage::HelloVersions(_))) => {
                reject(ctx, peer_pid, "a second handshake");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                read_failed(ctx, peer_pid, &e);
                break;
            }
        }
    }
    tracing::debug!("client pid {} disconnected", admitted.pid);
    Peer::Left
}

/// One batch: the rules (its client id, its seq), then journaled and counted on the blocking
/// pool, then acknowledged.
async fn receive_batch(
    ctx: &Arc<Context>,
    admitted: &Admitted<'_>,
    mut batch: Batch,
    expected: &mut Option<u64>,
    mut writer: &mut &Stream,
) -> Next {
    let peer_pid = admitted.peer_pid;
    if batch.client_id != admitted.client_id {
        refuse(ctx, peer_pid, "a batch for another client id");
        return Next::Close;
    }
    batch.client_id = admitted.client;
    let seq = batch.seq;
    let last = ctx.counting.last_counted(admitted.client);
    let resend = last.is_some_and(|last| seq <= last);
    if !resend {
        if let Some(next) = expected.filter(|next| seq != *next) {
            refuse(
                ctx,
                peer_pid,
                &format!("batch seq {seq} where {next} was expected"),
            );
            return Next::Close;
        }
    }
    let counting = Arc::clone(&ctx.counting);
    let config_id = admitted.config.id;
    let counted = crate::blocking::run(move || counting.count(config_id, batch)).await;
    if !matches!(counted, Ok(true)) {
        return Next::StillThere;
    }
    if !resend {
        *expected = Some(seq.saturating_add(1));
    }
    if write_message(&mut writer, &LeaderMessage::Ack { seq })
        .await
        .is_err()
    {
        refuse(ctx, peer_pid, "it does not read its acknowledgements");
        return Next::Close;
    }
    Next::Read
}

/// The handshake decided by versions alone ([`protocol::handshake`]; they are read the same way
/// in every protocol): `Ok` with the protocol to speak, or the answer that ends the connection
/// (logged here).
fn versions_decide(
    ctx: &Context,
    oldest: u32,
    newest: u32,
    library_version: &str,
    pid: u32,
) -> Result<u32, LeaderMessage> {
    let ours = &ctx.library_version;
    match protocol::handshake(
        (oldest, newest),
        ctx.protocols,
        super::is_newer(library_version, ours),
    ) {
        Handshake::Welcome(dialect) => Ok(dialect),
        Handshake::Refuse => {
            let (our_oldest, our_newest) = ctx.protocols;
            let reason = format!(
                "protocol {newest} is not supported by this leader (library {}, protocols {our_oldest}-{our_newest})",
                crate::VERSION,
            );
            tracing::warn!("refused pid {pid} (library {library_version}): {reason}");
            Err(LeaderMessage::Refused { reason })
        }
        Handshake::HandOver => {
            let reason = format!(
                "pid {pid} runs library {library_version} (protocol {newest}), newer than this leader's {ours} (protocol {}): handing over",
                ctx.protocols.1
            );
            tracing::info!("{reason}");
            Err(LeaderMessage::HandingOver { reason })
        }
    }
}

/// Writes a `Refused` or `HandingOver`; after a hand-over the leader steps down.
async fn answer_and_leave(ctx: &Context, writer: &mut &Stream, answer: LeaderMessage) {
    let handing_over = matches!(answer, LeaderMessage::HandingOver { .. });
    let _ = write_message(writer, &answer).await;
    if handing_over {
        ctx.status.request_handover();
    }
}

fn read_failed(ctx: &Context, peer_pid: Option<i32>, e: &ReadError) {
    match e {
        ReadError::TooSlow => {
            ctx.tally.one(|c| &mut c.refused_connections);
            if let Some(n) = SLOW_LOG.check() {
                tracing::warn!(
                    "closed the connection of pid {}: {e}{}",
                    Known(peer_pid),
                    suppressed_note(n)
                );
            }
        }
        ReadError::OverBudget(_) => {
            ctx.tally.one(|c| &mut c.refused_connections);
            if let Some(n) = BUDGET_LOG.check() {
                tracing::warn!(
                    "closed the connection of pid {}: {e}{}",
                    Known(peer_pid),
                    suppressed_note(n)
                );
            }
        }
        _ => reject(ctx, peer_pid, &e.to_string()),
    }
}

/// A frame that is not a valid message.
fn reject(ctx: &Context, peer_pid: Option<i32>, why: &str) {
    ctx.tally.one(|c| &mut c.rejected_frames);
    if let Some(suppressed) = BAD_FRAME_LOG.check() {
        tracing::warn!(
            "closed the connection of pid {}: {why}{}",
            Known(peer_pid),
            suppressed_note(suppressed)
        );
    }
}

/// A valid message that breaks the protocol's rules.
fn refuse(ctx: &Context, peer_pid: Option<i32>, why: &str) {
    ctx.tally.one(|c| &mut c.refused_connections);
    if let Some(suppressed) = RULE_LOG.check() {
        tracing::warn!(
            "closed the connection of pid {}: {why}{}",
            Known(peer_pid),
            suppressed_note(suppressed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Known;

    #[test]
    fn peers_are_named_by_number_or_as_unknown() {
        assert_eq!(
            format!("closed the connection of pid {}", Known(Some(21840))),
            "closed the connection of pid 21840"
        );
        assert_eq!(format!("pid {}", Known::<i32>(None)), "pid unknown");
        assert_eq!(format!("uid {}", Known(Some(65534u32))), "uid 65534");
    }
}
