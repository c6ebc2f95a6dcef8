//! The dialling side: resolves a node name, connects (from the listen IP when it is a
//! specific one), and runs the dialer's handshake, which checks who answered before it
//! proves anything.

use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};
use tracing::info;
use wasmnode_proto::handshake::Dialer;
use wasmnode_proto::handshake::Refusal;
use wasmnode_proto::{Error as ProtoError, OLDEST_VERSION, PROTOCOL_VERSION};

use super::wire::Wire;
use super::{DialError, Dist, Peer};
use crate::tls;

impl Dist {
    /// Connects to `name` (or returns the live connection), with the configured deadline.
    pub async fn connect(&self, name: &str) -> Result<Peer, DialError> {
        {
            let mut st = self.0.state.lock().unwrap();
            if let Some(p) = st.peers.get(name) {
                return Ok(p.clone());
            }
            if st.closing {
                return Err(DialError::Leaving);
            }
            if !st.dialing.insert(name.to_string()) {
                return Err(DialError::InProgress);
            }
        }
        let result = match tokio::time::timeout(self.0.cfg.connect_timeout, self.dial(name)).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout),
        };
        self.0.state.lock().unwrap().dialing.remove(name);
        result
    }

    async fn dial(&self, name: &str) -> Result<Peer, DialError> {
        match self.dial_version(name, PROTOCOL_VERSION).await {
            // A node of the previous wire version (a rolling update under way): speak its,
            // so that workers can still be handed over to and from it.
            Err(DialError::Handshake(ProtoError::Refused { code: Refusal::VersionMismatch, reason })) => {
                info!(node = %self.name(), peer = name, %reason, "{name} refused wire version {PROTOCOL_VERSION}: dialling it again in version {OLDEST_VERSION}");
                self.dial_version(name, OLDEST_VERSION).await
            }
            other => other,
        }
    }

    async fn dial_version(&self, name: &str, version: u16) -> Result<Peer, DialError> {
        let target = crate::name::NodeName::parse(name).map_err(DialError::BadName)?;
        let addr = self.resolve(&target).await?;
        let mut stream = self.open(addr).await.map_err(|e| DialError::Connect(addr, e))?;
        stream.set_nodelay(true)?;
        let mut wire = match &self.0.cfg.tls {
            None => Wire::plain(),
            Some(config) => {
                let mut conn = config.client(&target.host)?;
                tls::handshake(&mut stream, &mut conn).await.map_err(|e| match e {
                    tls::HandshakeError::Refused { code, reason } => DialError::Handshake(ProtoError::Refused { code, reason }),
                    e => DialError::Tls(e.to_string()),
                })?;
                Wire::tls(conn)?
            }
        };
        let (dialer, hello) = Dialer::start_version(&self.identity(), name, &self.0.cfg.cookie, &wire.binding, version)?;
        wire.write(&mut stream, &hello).await?;
        let challenge = wire.read(&mut stream).await?;
        // Checked before anything more is sent: the answer opens with this handshake's
        // keys and comes from the node dialled.
        let (proven, proof) = dialer.on_challenge(challenge).map_err(|e| match e {
            ProtoError::WrongNode { dialled, answered } => DialError::WrongNode { dialled, answered },
            e => DialError::Handshake(e),
        })?;
        wire.write(&mut stream, &proof).await?;
        let answer = wire.read(&mut stream).await?;
        let (peer_id, session) = proven.on_accept(answer)?;
        let (sealer, opener) = wire.record_layer(session);
        let registered = {
            let mut st = self.0.state.lock().unwrap();
            match st.peers.get(name) {
                // The peer's own dial won meanwhile; keep that one.
                Some(existing) => Err(existing.clone()),
                None => Ok(self.register(&mut st, &peer_id, addr, sealer)),
            }
        };
        match registered {
            Err(existing) => Ok(existing),
            Ok((peer, rx)) => {
                let (raw, plain) = wire.leftover();
                self.start(peer.clone(), stream, raw, plain, opener, rx);
                Ok(peer)
            }
        }
    }

    async fn resolve(&self, target: &crate::name::NodeName) -> Result<SocketAddr, DialError> {
        let fail = |why: String| DialError::Resolve(target.host.clone(), why);
        if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, target.port));
        }
        match self.0.cfg.nameserver {
            Some(ns) => {
                let resolver = crate::resolve::resolver(Some(ns), self.0.cfg.connect_timeout).map_err(|e| fail(e.to_string()))?;
                let ips = resolver.lookup_ip(target.host.as_str()).await.map_err(|e| fail(e.to_string()))?;
                ips.iter().next().map(|ip| SocketAddr::new(ip, target.port)).ok_or_else(|| fail("no addresses".into()))
            }
            None => tokio::net::lookup_host(target.address()).await.map_err(|e| fail(e.to_string()))?.next().ok_or_else(|| fail("no addresses".into())),
        }
    }

    async fn open(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match self.0.cfg.source_ip {
            Some(ip) if ip.is_ipv4() == addr.is_ipv4() => {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
            _ => TcpStream::connect(addr).await,
        }
    }
}
