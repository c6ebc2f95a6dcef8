//! The accepting side: the accept loop that never waits for a handshake slot (see
//! [`crate::admission`]), the acceptor's handshake (TLS first under `[node.tls]`, then the
//! cookie's), and the decision, under the table's lock, whether to keep the connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, warn};
use wasmnode_proto::handshake::{Acceptor, Message, Refusal};

use super::wire::{write_message, Wire};
use super::{DialError, Dist};
use crate::admission::{self, HalfOpen};
use crate::refusals::{self, RefusalLog};
use crate::tls;

/// The depth of the kernel's queue of connections waiting for `accept`, asked for every
/// listener the node opens (Linux caps it at `net.core.somaxconn`, 4096 by default since
/// 5.4). Tokio's `TcpListener::bind` asks for 128, the standard library's value: a burst
/// of 129 connects while the node is busy for a moment (a flood of connections, or a
/// moment without a CPU on a loaded machine) fills it, and the kernel then drops every
/// SYN, a member's and the CLI's too, whose connect then waits a second for its
/// retransmission, then two more. nginx asks for 511, Go for `somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, as
/// `TcpListener::bind` does save for the queue's depth.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Dist {
    /// Accepts connections until the listener fails; spawn it.
    /// It never waits for a handshake slot: a connection past the caps drops the oldest
    /// half-open one of its source, or of all (see [`admission`]).
    pub async fn serve(self, listener: TcpListener) {
        let half_open: Arc<Mutex<HalfOpen<tokio::task::AbortHandle>>> = Arc::new(Mutex::new(HalfOpen::new(admission::PER_SOURCE, admission::TOTAL)));
        let mut dropped_log = RefusalLog::default();
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (id, dropped) = half_open.lock().unwrap().admit(addr.ip());
            if !dropped.is_empty() {
                for h in &dropped {
                    h.abort();
                }
                crate::metrics::global().handshake_failed("dropped");
                if let Some(n) = dropped_log.refused(addr.ip(), Instant::now()) {
                    warn!(peer = %addr, "too many handshakes in progress: dropped the oldest unfinished one to admit {addr}{}", refusals::left_out(n));
                }
            }
            let dist = self.clone();
            let slot = half_open.clone();
            let task = tokio::spawn(async move {
                let timeout = dist.0.cfg.connect_timeout;
                let result = tokio::time::timeout(timeout, dist.accept(stream, addr, &slot, id)).await;
                slot.lock().unwrap().finish(id);
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        crate::metrics::global().handshake_failed(e.cause());
                        debug!("handshake from {addr} failed: {e}");
                    }
                    Err(_) => {
                        crate::metrics::global().handshake_failed("timeout");
                        debug!("handshake from {addr} timed out");
                    }
                }
            });
            if let Some(late) = half_open.lock().unwrap().set_handle(id, task.abort_handle()) {
                late.abort();
            }
        }
    }

    /// Runs the accepting side of a handshake; `id` is its place among the half-open
    /// connections, left once the peer has proved the cookie (dropped before: it stops).
    async fn accept(&self, mut stream: TcpStream, addr: SocketAddr, half_open: &Mutex<HalfOpen<tokio::task::AbortHandle>>, id: u64) -> Result<(), DialError> {
        stream.set_nodelay(true)?;
        let mut wire = match self.accept_tls(&mut stream, addr).await? {
            Some(conn) => Wire::tls(conn)?,
            None => Wire::plain(),
        };
        let hello = wire.read(&mut stream).await?;
        let (acceptor, challenge) = match Acceptor::on_hello_bound(&self.identity(), &self.0.cfg.cookie, hello, &wire.binding) {
            Ok(x) => x,
            Err(e) => {
                self.warn_refused(addr, &e);
                wire.write(&mut stream, &Message::Refuse { code: Refusal::for_error(&e), reason: e.to_string() }).await?;
                return Err(e.into());
            }
        };
        wire.write(&mut stream, &challenge).await?;
        let proof = wire.read(&mut stream).await?;
        let claimed = acceptor.claimed().name.clone();
        let (peer_id, mut session) = match acceptor.on_proof(proof) {
            Ok(x) => x,
            Err(e) => {
                self.warn_refused(addr, format_args!("{e} (claimed name {claimed})"));
                let _ = wire.write(&mut stream, &Message::Refuse { code: Refusal::for_error(&e), reason: e.to_string() }).await;
                return Err(e.into());
            }
        };
        // Under TLS, the dialer's certificate must name the host of the name it proved.
        if let Some(link) = &wire.tls {
            let host = crate::name::NodeName::parse(&peer_id.name).map(|n| n.host).unwrap_or_default();
            if let Err(why) = link.check_names(&host) {
                self.warn_refused(addr, format_args!("{} from {addr}: {why}", peer_id.name));
                let _ = wire
                    .write(
                        &mut stream,
                        &Message::Refuse { code: Refusal::Certificate, reason: format!("the certificate {} presented does not name {host}", peer_id.name) },
                    )
                    .await;
                return Err(why.into());
            }
        }
        // It holds the cookie: no longer half-open, never dropped from here on (it may
        // have been dropped just before: then it stops here, before it registers).
        if !half_open.lock().unwrap().finish(id) {
            // Counted and logged where it was dropped.
            return Ok(());
        }
        // Sealed now, as the first record of this side, before anything else can be.
        let accept = session.accept();
        let (sealer, opener) = wire.record_layer(session);
        let me = &self.0.cfg.name;
        let decision = {
            let mut st = self.0.state.lock().unwrap();
            if st.closing {
                Err((Refusal::Leaving, "this node is leaving".to_string()))
            } else if peer_id.name == *me {
                Err((Refusal::OwnName, "that is this node's own name".to_string()))
            } else if st.peers.contains_key(&peer_id.name) {
                Err((Refusal::NameInUse, format!("name {} is already connected", peer_id.name)))
            } else if st.dialing.contains(&peer_id.name) && me.as_str() < peer_id.name.as_str() {
                Err((Refusal::SimultaneousConnect, format!("simultaneous connect: keeping the connection dialled by {me}")))
            } else {
                Ok(self.register(&mut st, &peer_id, addr, sealer))
            }
        };
        match decision {
            Err((code, reason)) => {
                match code {
                    Refusal::SimultaneousConnect => debug!("refused {} from {addr}: {reason}", peer_id.name),
                    _ => {
                        if matches!(code, Refusal::NameInUse | Refusal::OwnName) {
                            crate::metrics::global().handshake_failed("name_in_use");
                        }
                        self.warn_refused(addr, &reason);
                    }
                }
                wire.write(&mut stream, &Message::Refuse { code, reason }).await?;
                Ok(())
            }
            Ok((peer, rx)) => {
                wire.write(&mut stream, &accept).await?;
                let (raw, plain) = wire.leftover();
                self.start(peer, stream, raw, plain, opener, rx);
                Ok(())
            }
        }
    }

    /// Tells a TLS dialer (its first byte opens a TLS record) from one that speaks the
    /// handshake in the clear, refuses the kind this node does not expect, and runs the
    /// TLS handshake with the other: its connection, or `None` in the clear.
    async fn accept_tls(&self, stream: &mut TcpStream, addr: SocketAddr) -> Result<Option<rustls::Connection>, DialError> {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed the connection before its handshake").into());
        }
        let speaks_tls = first[0] == tls::TLS_HANDSHAKE_BYTE;
        match (&self.0.cfg.tls, speaks_tls) {
            (None, false) => Ok(None),
            (Some(config), true) => {
                let mut conn = config.server();
                match tls::handshake(stream, &mut conn).await {
                    Ok(()) => Ok(Some(conn)),
                    Err(e) => {
                        self.warn_refused(addr, &e);
                        Err(DialError::Tls(e.to_string()))
                    }
                }
            }
            (None, true) => {
                self.warn_refused(addr, "it opened with TLS, but this node has no [node.tls] (set it on every node of the cluster, or on none)");
                refuse_other_kind(stream, "this node does not use TLS: [node.tls] is not set on it").await?;
                Err(DialError::Tls("a TLS dialer, and this node has no [node.tls]".into()))
            }
            (Some(_), false) => {
                self.warn_refused(addr, "it speaks without TLS, but this node requires TLS ([node.tls] is set here)");
                refuse_other_kind(stream, "this node requires TLS: set [node.tls] with a certificate from its CA").await?;
                Err(DialError::Tls("a dialer without TLS, and this node requires it".into()))
            }
        }
    }

    /// Logs a refused handshake, at most once per address per window (see [`refusals`]).
    fn warn_refused(&self, addr: SocketAddr, why: impl std::fmt::Display) {
        if let Some(n) = self.0.refusals.lock().unwrap().refused(addr.ip(), Instant::now()) {
            warn!("handshake refused from {addr}: {why}{}", refusals::left_out(n));
        }
    }
}

/// Refuses a dialer of the other kind (TLS or not) in the clear, which both kinds can
/// read. Its first message is read first: a socket closed with unread bytes sends a
/// reset, which can destroy the refusal before the dialer reads it.
async fn refuse_other_kind(stream: &mut TcpStream, reason: &str) -> std::io::Result<()> {
    let mut first = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut first)).await;
    write_message(stream, &Message::Refuse { code: Refusal::ModeMismatch, reason: reason.into() }).await?;
    stream.shutdown().await
}
