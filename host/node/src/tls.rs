//! Optional mutual TLS for distribution (`[node.tls]`): certificates on top of the cookie.
//!
//! With `[node.tls]` set, every connection between nodes is TLS 1.3 (rustls) with a
//! certificate on both sides, each checked against the configured CA, and the handshake
//! of [`wasmnode_proto::handshake`] runs inside it: the cookie is still proven, and its
//! proof is bound to this TLS connection (both sides hash a value exported from the TLS
//! session into it, RFC 5705), so it cannot be carried into another. Frames then travel
//! in TLS records, not sealed a second time.
//!
//! A node's certificate must name the host of its node name (`myapp@10.0.0.5` needs an IP
//! SAN 10.0.0.5; `myapp@myapp-0.myapp-headless.ns.svc.cluster.local` a DNS SAN, which a
//! wildcard `*.myapp-headless.ns.svc.cluster.local` covers): the dialer checks it as any
//! TLS client checks a server, the acceptor checks the dialer's against the name it
//! claims inside the handshake.
//!
//! The files are read again when they change ([`Tls::reload`], on a timer): new
//! connections use the new certificate and CA, connections up keep theirs (Kubernetes
//! rotates a Secret's files in place).
//!
//! The record layer ([`Link`]) is sans-I/O: bytes in, bytes out, like [`wasmnode_proto::seal`].

use std::io::{IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Buf, BufMut, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, Connection, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// The first byte of a TLS record carrying a handshake message (a `ClientHello`): how an
/// acceptor tells a TLS dialer from one that speaks the handshake in the clear, whose
/// first byte is the high byte of a length below 4,096, 0.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The largest certificate, key or CA file read.
pub const PEM_LIMIT: u64 = 1 << 20;

/// The label of the value both sides export from the TLS session into the handshake.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-wasmnode-cookie-binding";

/// Why TLS settings could not be made from the files, or a peer's certificate was not
/// accepted. The first group is the operator's to fix (the files), the second the peer's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read: missing, a directory or device, too large.
    #[error("[node.tls] {what} {} {why}", path.display())]
    Read { what: &'static str, path: PathBuf, why: String },
    /// A file's PEM, or a certificate in it, is malformed or unusable.
    #[error("[node.tls] {what} {}: {why}", path.display())]
    Invalid { what: &'static str, path: PathBuf, why: String },
    /// A certificate or CA file holds no certificate.
    #[error("[node.tls] {what} {}: no CERTIFICATE in it", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    /// This node's own certificate does not name the host of its node name.
    #[error("[node.tls] cert {} does not name {host}, the host of this node's name (add it as a subject alternative name)", cert.display())]
    OwnHostNotNamed { cert: PathBuf, host: String },
    /// The key is not the certificate's.
    #[error("[node.tls] key {} does not go with cert {}: {why}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf, why: String },
    /// A host no certificate can name (the node name's host is malformed).
    #[error("{0} is neither an IP address nor a DNS name a certificate can carry")]
    BadHost(String),
    /// The peer presented no certificate.
    #[error("no certificate was presented")]
    NoPeerCertificate,
    /// The peer's certificate does not parse.
    #[error("the certificate does not parse: {0}")]
    Unparsable(String),
    /// The peer's certificate does not name the host of the node name it claims.
    #[error("its certificate does not name {0}, the host of the node name it claims")]
    HostNotNamed(String),
    /// rustls refused a setting or a connection.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Where a node's certificate, key and CA come from (`[node.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates peers' certificates must chain to (PEM).
    pub ca: PathBuf,
    /// How often the files are checked for changes.
    pub reload_interval: std::time::Duration,
}

/// The client and server settings made from one reading of the files.
struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

/// A node's TLS settings, re-read when its files change.
pub struct Tls {
    files: TlsFiles,
    /// The host of this node's name: its own certificate must name it.
    host: String,
    current: RwLock<Arc<Configs>>,
    /// SHA-256 of the files' contents last loaded.
    loaded: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).field("host", &self.host).finish()
    }
}

impl Tls {
    /// Reads and checks the files for a node whose name has host `host`.
    pub fn load(files: TlsFiles, host: &str) -> Result<Tls, TlsError> {
        let (contents, digest) = read_files(&files)?;
        let configs = build(&files, &contents, host)?;
        Ok(Tls { files, host: host.to_string(), current: RwLock::new(Arc::new(configs)), loaded: Mutex::new(digest) })
    }

    /// Reads the files again; when their contents changed and still make a valid
    /// setting, new connections use it. `Ok(true)` when it changed; an error (a file
    /// half written, a certificate that does not name this host) keeps the old setting.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (contents, digest) = read_files(&self.files)?;
        if *self.loaded.lock().unwrap() == digest {
            return Ok(false);
        }
        let configs = build(&self.files, &contents, &self.host)?;
        *self.current.write().unwrap() = Arc::new(configs);
        *self.loaded.lock().unwrap() = digest;
        Ok(true)
    }

    /// A dialer's side of a new connection to the node whose name has host `host`.
    pub fn client(&self, host: &str) -> Result<Connection, TlsError> {
        let name = server_name(host)?;
        let config = self.current.read().unwrap().client.clone();
        let mut conn = rustls::ClientConnection::new(config, name)?;
        conn.set_buffer_limit(None);
        Ok(Connection::Client(conn))
    }

    /// An acceptor's side of a new connection.
    pub fn server(&self) -> Connection {
        let config = self.current.read().unwrap().server.clone();
        let mut conn = rustls::ServerConnection::new(config).expect("a server config rustls built");
        conn.set_buffer_limit(None);
        Connection::Server(conn)
    }
}

/// Re-reads the files every `reload_interval` for as long as the node runs, logging
/// each change taken and each one refused.
pub fn spawn_reload(tls: Arc<Tls>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(tls.files.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // The last refusal logged, so a file left broken is logged once, not every tick.
        let mut refused = None;
        loop {
            tick.tick().await;
            match tls.reload() {
                Ok(false) => {}
                Ok(true) => {
                    refused = None;
                    tracing::info!(cert = %tls.files.cert.display(), "TLS certificate files changed: new connections use them, connections up keep theirs");
                }
                Err(e) => {
                    if refused.as_ref() != Some(&e) {
                        tracing::warn!(cert = %tls.files.cert.display(), "TLS certificate files changed but are not usable, keeping the ones loaded before: {e}");
                        refused = Some(e);
                    }
                }
            }
        }
    });
}

/// The name a certificate must carry for `host` (an IP address or a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::BadHost(host.to_string()))
}

/// Whether the leaf of `certs` names `host` (its chain was verified by the TLS handshake).
pub fn check_names(certs: Option<&[CertificateDer<'static>]>, host: &str) -> Result<(), TlsError> {
    let leaf = certs.and_then(|c| c.first()).ok_or(TlsError::NoPeerCertificate)?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| TlsError::Unparsable(e.to_string()))?;
    rustls::client::verify_server_name(&parsed, &server_name(host)?).map_err(|_| TlsError::HostNotNamed(host.to_string()))
}

/// The value both sides of `conn` export into the handshake (see the module's docs).
pub fn binding(conn: &Connection) -> Result<[u8; 32], TlsError> {
    Ok(conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)?)
}

fn read_files(files: &TlsFiles) -> Result<([Vec<u8>; 3], [u8; 32]), TlsError> {
    let read = |what: &'static str, path: &Path| {
        crate::files::read_limited(path, PEM_LIMIT).map_err(|e| TlsError::Read { what, path: path.to_path_buf(), why: e.to_string() })
    };
    let contents = [read("cert", &files.cert)?, read("key", &files.key)?, read("ca", &files.ca)?];
    let mut h = Sha256::new();
    for c in &contents {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c);
    }
    Ok((contents, h.finalize().into()))
}

fn build(files: &TlsFiles, [cert, key, ca]: &[Vec<u8>; 3], host: &str) -> Result<Configs, TlsError> {
    let invalid = |what: &'static str, path: &Path, why: &dyn std::fmt::Display| TlsError::Invalid { what, path: path.to_path_buf(), why: why.to_string() };
    let key_mismatch = |e: rustls::Error| TlsError::KeyMismatch { key: files.key.clone(), cert: files.cert.clone(), why: e.to_string() };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert).collect::<Result<_, _>>().map_err(|e| invalid("cert", &files.cert, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { what: "cert", path: files.cert.clone() });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("key", &files.key, &e))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        let c = c.map_err(|e| invalid("ca", &files.ca, &e))?;
        roots.add(c).map_err(|e| invalid("ca", &files.ca, &e))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate { what: "ca", path: files.ca.clone() });
    }
    check_names(Some(&chain), host).map_err(|_| TlsError::OwnHostNotNamed { cert: files.cert.clone(), host: host.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(|e| invalid("ca", &files.ca, &e))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_mismatch)?;
    // Nodes reconnect with a full handshake: no tickets to keep or to steal.
    server.send_tls13_tickets = 0;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(key_mismatch)?;
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Configs { client: Arc::new(client), server: Arc::new(server) })
}

/// Feeds `raw` (bytes from the socket) to `conn` and appends what it decrypts to `plain`;
/// a partial record stays inside `conn`. An error means the connection must close.
pub fn open(conn: &mut Connection, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), rustls::Error> {
    loop {
        if !raw.is_empty() {
            let mut rd: &[u8] = raw;
            let n = conn.read_tls(&mut rd).map_err(|e| rustls::Error::General(e.to_string()))?;
            if n == 0 {
                // Never expected with bytes to give; an error, not a loop without end.
                return Err(rustls::Error::General("TLS took none of the bytes read".into()));
            }
            raw.advance(n);
        }
        let state = conn.process_new_packets()?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let start = plain.len();
            plain.resize(start + n, 0);
            conn.reader().read_exact(&mut plain[start..]).map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        if raw.is_empty() {
            return Ok(());
        }
    }
}

/// Encrypts `plain` with `conn` and appends the records (and anything else `conn` has
/// to send, such as a key update) to `out`.
pub fn seal(conn: &mut Connection, plain: &[u8], out: &mut BytesMut) {
    seal_pieces(conn, [plain], &mut out.writer());
}

/// Seals `pieces` as one byte stream (rustls packs them into records whatever their
/// bounds), then appends the records to `out`.
pub fn seal_pieces<'p>(conn: &mut Connection, pieces: impl IntoIterator<Item = &'p [u8]>, out: &mut impl Write) {
    let slices: Vec<IoSlice<'_>> = pieces.into_iter().filter(|p| !p.is_empty()).map(IoSlice::new).collect();
    if !slices.is_empty() {
        let len: usize = slices.iter().map(|p| p.len()).sum();
        let n = conn.writer().write_vectored(&slices).expect("writing to memory");
        assert_eq!(n, len, "rustls buffers without limit");
    }
    while conn.wants_write() {
        conn.write_tls(out).expect("writing to memory");
    }
}

/// One connection's TLS after its handshake, shared by its reader and its writers: the
/// record layer in place of [`wasmnode_proto::seal`]'s.
pub struct Link(Mutex<Connection>);

impl Link {
    pub fn new(conn: Connection) -> Link {
        Link(Mutex::new(conn))
    }

    /// See [`seal`]; whoever seals writes next (records keep their order on the wire).
    pub fn seal(&self, plain: &[u8], out: &mut BytesMut) {
        seal(&mut self.0.lock().unwrap(), plain, out);
    }

    /// See [`seal_pieces`].
    pub fn seal_pieces<'p>(&self, pieces: impl IntoIterator<Item = &'p [u8]>, out: &mut impl Write) {
        seal_pieces(&mut self.0.lock().unwrap(), pieces, out);
    }

    /// See [`open`].
    pub fn open(&self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), rustls::Error> {
        open(&mut self.0.lock().unwrap(), raw, plain)
    }

    /// Whether the peer's certificate names `host` (see [`check_names`]).
    pub fn check_names(&self, host: &str) -> Result<(), TlsError> {
        check_names(self.0.lock().unwrap().peer_certificates(), host)
    }
}

/// Drives `conn`'s TLS handshake over `stream`; bytes that arrive after it stay in
/// `conn`. When the peer answers with a refusal in the clear (it does not use TLS), that
/// refusal is the error: the dialer logs the peer's own words.
pub async fn handshake(stream: &mut tokio::net::TcpStream, conn: &mut Connection) -> Result<(), HandshakeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The first bytes the peer sent, kept to recognise a refusal in the clear.
    let mut first = Vec::new();
    let mut raw = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    loop {
        seal(conn, &[], &mut out);
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(HandshakeError::Io)?;
            out.clear();
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        if stream.read_buf(&mut raw).await.map_err(HandshakeError::Io)? == 0 {
            return Err(HandshakeError::Closed);
        }
        if first.len() < wasmnode_proto::handshake::MAX_HANDSHAKE_FRAME {
            first.extend_from_slice(&raw[..raw.len().min(wasmnode_proto::handshake::MAX_HANDSHAKE_FRAME - first.len())]);
        }
        let mut rd: &[u8] = &raw;
        let fed = conn.read_tls(&mut rd).map_err(HandshakeError::Io)?;
        raw.advance(fed);
        if let Err(e) = conn.process_new_packets() {
            if let Ok(Some((wasmnode_proto::handshake::Message::Refuse { code, reason }, _))) = wasmnode_proto::handshake::Message::decode(&first) {
                return Err(HandshakeError::Refused { code, reason });
            }
            // Tell the peer why (an alert), as far as the socket takes it.
            seal(conn, &[], &mut out);
            let _ = stream.write_all(&out).await;
            return Err(HandshakeError::Tls(e));
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    #[error("refused by peer: {reason}")]
    Refused { code: wasmnode_proto::Refusal, reason: String },
    #[error("peer closed the connection during the TLS handshake")]
    Closed,
    #[error("{0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and certificates for `hosts`, made as `wasmnode certs` makes them, in `dir`.
    fn files(dir: &Path, ca: &crate::certs::Ca, host: &str, names: &[&str]) -> TlsFiles {
        let (cert, key) = ca.issue(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        std::fs::write(dir.join(format!("{host}.crt")), cert).unwrap();
        std::fs::write(dir.join(format!("{host}.key")), key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        TlsFiles {
            cert: dir.join(format!("{host}.crt")),
            key: dir.join(format!("{host}.key")),
            ca: dir.join("ca.crt"),
            reload_interval: std::time::Duration::from_secs(1),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wasmnode-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Runs a TLS handshake in memory; both sides' connections.
    fn pair(client: &Tls, server: &Tls, host: &str) -> Result<(Connection, Connection), rustls::Error> {
        let mut c = client.client(host).unwrap();
        let mut s = server.server();
        for _ in 0..10 {
            let mut wire = BytesMut::new();
            seal(&mut c, &[], &mut wire);
            open(&mut s, &mut wire, &mut BytesMut::new())?;
            seal(&mut s, &[], &mut wire);
            open(&mut c, &mut wire, &mut BytesMut::new())?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok((c, s));
            }
        }
        panic!("handshake did not finish")
    }

    #[test]
    fn records_round_trip_and_an_altered_one_does_not_open() {
        let d = dir("records");
        let ca = crate::certs::Ca::new().unwrap();
        let a = Tls::load(files(&d, &ca, "a", &["127.0.0.1"]), "127.0.0.1").unwrap();
        let b = Tls::load(files(&d, &ca, "b", &["b.example"]), "b.example").unwrap();
        let (mut c, mut s) = pair(&a, &b, "b.example").unwrap();
        assert_eq!(binding(&c).unwrap(), binding(&s).unwrap(), "both sides export the same binding");
        check_names(s.peer_certificates(), "127.0.0.1").unwrap();
        assert!(check_names(s.peer_certificates(), "127.0.0.2").is_err(), "the dialer's certificate names only its host");
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        seal(&mut c, &big, &mut wire);
        assert!(!wire.windows(64).any(|w| w == &big[1000..1064]), "encrypted");
        let mut plain = BytesMut::new();
        let mut replay = wire.clone();
        for piece in wire.chunks(999) {
            open(&mut s, &mut BytesMut::from(piece), &mut plain).unwrap();
        }
        assert_eq!(&plain[..], &big[..]);
        // The same bytes again (replayed), or with one bit flipped: the record does not open.
        let (mut c2, mut s2) = pair(&a, &b, "b.example").unwrap();
        let mut fresh = BytesMut::new();
        seal(&mut c2, b"hello", &mut fresh);
        fresh[10] ^= 1;
        assert!(open(&mut s2, &mut fresh, &mut BytesMut::new()).is_err());
        assert!(open(&mut s, &mut replay, &mut BytesMut::new()).is_err(), "a replayed record does not open");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_certificate_from_another_ca_or_for_another_host_is_refused() {
        let d = dir("refused");
        let ca = crate::certs::Ca::new().unwrap();
        let other = crate::certs::Ca::new().unwrap();
        let a = Tls::load(files(&d, &ca, "a", &["a.example"]), "a.example").unwrap();
        let d2 = dir("refused-other");
        let stranger = Tls::load(files(&d2, &other, "s", &["s.example"]), "s.example").unwrap();
        assert!(pair(&stranger, &a, "a.example").is_err(), "the server refuses a client from another CA");
        assert!(pair(&a, &stranger, "s.example").is_err(), "the client refuses a server from another CA");
        // The server's certificate must name the host dialled.
        let b = Tls::load(files(&d, &ca, "b", &["b.example"]), "b.example").unwrap();
        assert!(pair(&a, &b, "c.example").is_err());
        // A node's own certificate must name its host.
        let err = Tls::load(files(&d, &ca, "c", &["c.example"]), "d.example").unwrap_err();
        assert!(matches!(&err, TlsError::OwnHostNotNamed { host, .. } if host == "d.example"), "{err:?}");
        assert!(err.to_string().contains("does not name d.example"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&d2);
    }

    #[test]
    fn reload_takes_new_files_and_keeps_the_old_setting_on_bad_ones() {
        let d = dir("reload");
        let ca = crate::certs::Ca::new().unwrap();
        let f = files(&d, &ca, "a", &["a.example"]);
        let tls = Tls::load(f.clone(), "a.example").unwrap();
        assert_eq!(tls.reload(), Ok(false), "nothing changed");
        files(&d, &ca, "a", &["a.example", "a2.example"]);
        assert_eq!(tls.reload(), Ok(true));
        std::fs::write(&f.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        assert!(tls.reload().is_err(), "a half-written file is an error");
        // The setting loaded before is still in use.
        let b = Tls::load(files(&d, &ca, "b", &["b.example"]), "b.example").unwrap();
        assert!(pair(&b, &tls, "a.example").is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
