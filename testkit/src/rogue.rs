//! A rogue peer for the robustness tests: speaks (or abuses) the documented protocol on
//! `agent.socket` with the library's own pure codec. Shared by `tests/rogue_peers.rs` and the
//! `appsignal-test-rogue` helper binary (a rogue in a process of its own).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use appsignal_agent::export_config::ExportConfig;
use appsignal_agent::protocol::{
    self, Batch, ClientMessage, Hello, LeaderMessage, MetricKey, PROTOCOL_VERSION,
};

pub struct Rogue {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

/// A push configuration for the rogue (the key decides whether the receiver takes its payloads).
pub fn config(endpoint: &str, key: &str, app: &str) -> ExportConfig {
    ExportConfig {
        push_api_key: key.into(),
        app_name: app.into(),
        environment: "demo".into(),
        endpoint: endpoint.into(),
        hostname: "rogue-host".into(),
        revision: String::new(),
        ..ExportConfig::default()
    }
}

/// A batch of one counter `name` += `value`.
pub fn batch(client_id: u64, seq: u64, created_ms: u64, name: &str, value: f64) -> Batch {
    Batch {
        client_id,
        seq,
        created_ms,
        counters: vec![(
            MetricKey {
                name: name.into(),
                tags: vec![],
            },
            value,
        )],
        ..Batch::default()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Rogue {
    pub fn connect(socket: &Path) -> std::io::Result<Rogue> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Rogue {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, message: &ClientMessage) -> std::io::Result<()> {
        let frame = protocol::encode(message).map_err(std::io::Error::other)?;
        self.stream.write_all(&frame)
    }

    /// The next message from the leader; `None` when it closed the connection (or said nothing
    /// within the read timeout).
    pub fn read(&mut self) -> Option<LeaderMessage> {
        loop {
            if let Ok(Some((message, used))) = protocol::decode::<LeaderMessage>(&self.buf) {
                self.buf.drain(..used);
                return Some(message);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Handshakes as `client_id`; returns the leader's answer (`None`: it closed the connection).
    pub fn hello(&mut self, client_id: u64, config: &ExportConfig) -> Option<LeaderMessage> {
        self.hello_as(client_id, config, PROTOCOL_VERSION)
    }

    pub fn hello_as(
        &mut self,
        client_id: u64,
        config: &ExportConfig,
        protocol_version: u32,
    ) -> Option<LeaderMessage> {
        let hello = ClientMessage::Hello(Hello {
            protocol_version,
            protocol: None,
            library_version: "0.0.1".into(),
            client_id,
            pid: std::process::id(),
            config: config.clone(),
        });
        self.send(&hello).ok()?;
        self.read()
    }

    /// Sends a batch and returns the leader's answer (`None`: it closed the connection).
    pub fn batch(&mut self, batch: Batch) -> Option<LeaderMessage> {
        self.send(&ClientMessage::Batch(batch)).ok()?;
        self.read()
    }

    /// Whether the leader closes this connection within `timeout` (anything it sends is skipped).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
