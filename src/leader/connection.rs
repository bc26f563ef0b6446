//! The leader's side of `agent.socket`: one task per connection. Handshake (protocol check,
//! owner-only peer check), then batches: each is journaled and counted before its `Ack`. Every
//! frame is untrusted; a bad one closes this connection only, with a rate-limited log line.

use std::sync::atomic::Ordering;

use anyhow::Result;
use interprocess::local_socket::tokio::{prelude::*, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{Shared, HANDSHAKE_TIMEOUT};
use crate::log::{suppressed_note, RateLimit};
use crate::protocol::{self, ClientMessage, FrameError, LeaderMessage, PROTOCOL_VERSION};

static BAD_FRAME_LOG: RateLimit = RateLimit::new(10_000);

/// Why reading a message failed.
enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
    TruncatedFrame,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read error: {e}"),
            ReadError::Frame(e) => write!(f, "{e}"),
            ReadError::TruncatedFrame => write!(f, "connection closed in the middle of a frame"),
        }
    }
}

/// Reads the next message. `Ok(None)`: the peer closed cleanly between frames. Cancel-safe: a
/// partial frame stays in `buf`.
async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<ClientMessage>, ReadError> {
    loop {
        match protocol::decode::<ClientMessage>(buf) {
            Ok(Some((message, used))) => {
                buf.drain(..used);
                return Ok(Some(message));
            }
            Ok(None) => {}
            Err(e) => return Err(ReadError::Frame(e)),
        }
        buf.reserve(16 * 1024);
        let n = reader.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::TruncatedFrame)
            };
        }
    }
}

async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &LeaderMessage,
) -> Result<()> {
    let frame = protocol::encode(message)?;
    writer.write_all(&frame).await?;
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

/// How a connection ended, for the stopping leader's handover decision.
pub(super) enum Peer {
    /// The process closed the connection, said something invalid, or never completed the handshake.
    Left,
    /// The process was still connected when the leader stopped: it will take over.
    StillThere,
}

/// After the stop signal: did the peer already leave (its EOF is waiting), or is it still there?
async fn peer_after_stop<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> Peer {
    match tokio::time::timeout(
        std::time::Duration::from_millis(5),
        read_message(reader, buf),
    )
    .await
    {
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

pub(super) async fn serve(
    stream: Stream,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Peer {
    // A forked child closes its copy, so that the client sees the hang-up when this process dies.
    let _fork_guard = stream_fd(&stream).map(crate::fork::Registered::new);
    let peer_pid = stream.peer_creds().ok().and_then(|c| c.pid());
    if !shared.workdir.world_accessible() {
        // Owner-only mode: only processes of our own user may feed this leader.
        let uid = stream.peer_creds().ok().and_then(|c| c.euid());
        let ours = crate::workdir::current_euid();
        if uid != Some(ours) {
            tracing::warn!(
                "refused a connection from uid {uid:?} (pid {peer_pid:?}): owner-only mode accepts uid {ours} only"
            );
            return Peer::Left;
        }
    }
    // `&Stream` reads and writes; no split needed.
    let (mut reader, mut writer) = (&stream, &stream);
    let mut buf = Vec::new();
    let hello =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut reader, &mut buf)).await {
            Ok(Ok(Some(ClientMessage::Hello(hello)))) => hello,
            Ok(Ok(None)) => return Peer::Left,
            Ok(Ok(Some(ClientMessage::Batch(_)))) => {
                reject(shared, peer_pid, "a batch before the handshake");
                return Peer::Left;
            }
            Ok(Err(e)) => {
                reject(shared, peer_pid, &e.to_string());
                return Peer::Left;
            }
            Err(_) => {
                tracing::debug!(
                "connection from pid {peer_pid:?} sent no handshake within {HANDSHAKE_TIMEOUT:?}"
            );
                return Peer::Left;
            }
        };
    if hello.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol {} is not supported by this leader (library {}, protocol {PROTOCOL_VERSION})",
            hello.protocol_version,
            crate::VERSION
        );
        tracing::warn!(
            "refused pid {} (library {}): {reason}",
            hello.pid,
            hello.library_version
        );
        let _ = write_message(&mut writer, &LeaderMessage::Refused { reason }).await;
        return Peer::Left;
    }
    if super::is_newer(&hello.library_version, &shared.config.library_version) {
        let reason = format!(
            "pid {} runs library {}, newer than this leader's {}: handing over",
            hello.pid, hello.library_version, shared.config.library_version
        );
        tracing::info!("{reason}");
        let _ = write_message(&mut writer, &LeaderMessage::HandingOver { reason }).await;
        shared.handover.notify_one();
        return Peer::Left;
    }
    let config_id = shared.counting().aggregator.register(&hello.config);
    if write_message(
        &mut writer,
        &LeaderMessage::Welcome {
            protocol_version: PROTOCOL_VERSION,
            library_version: shared.config.library_version.clone(),
            leader_pid: std::process::id(),
        },
    )
    .await
    .is_err()
    {
        return Peer::Left;
    }
    tracing::debug!(
        "client pid {} (library {}) connected",
        hello.pid,
        hello.library_version
    );
    loop {
        if *stop.borrow() {
            return peer_after_stop(&mut reader, &mut buf).await;
        }
        let message = tokio::select! {
            biased;
            _ = stop.changed() => None,
            message = read_message(&mut reader, &mut buf) => Some(message),
        };
        let Some(message) = message else {
            return peer_after_stop(&mut reader, &mut buf).await;
        };
        match message {
            Ok(Some(ClientMessage::Batch(batch))) => {
                let seq = batch.seq;
                if !shared.count(config_id, batch) {
                    // Not acknowledged: the process keeps the batch and is still there.
                    return Peer::StillThere;
                }
                if write_message(&mut writer, &LeaderMessage::Ack { seq })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Some(ClientMessage::Hello(_))) => {
                reject(shared, peer_pid, "a second handshake");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                reject(shared, peer_pid, &e.to_string());
                break;
            }
        }
    }
    tracing::debug!("client pid {} disconnected", hello.pid);
    Peer::Left
}

fn reject(shared: &Shared, peer_pid: Option<i32>, why: &str) {
    shared.rejected_frames.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = BAD_FRAME_LOG.check() {
        tracing::warn!(
            "closed the connection of pid {peer_pid:?}: {why}{}",
            suppressed_note(suppressed)
        );
    }
}
