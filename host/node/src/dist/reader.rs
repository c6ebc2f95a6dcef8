//! A connection's reader task: opens records, decodes frames without copying payloads,
//! reassembles fragments, answers pings, routes replies, and judges the peer's silence.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tracing::{debug, info, warn};
use wasmnode_proto::frame::{self, Reassembler, MAX_MESSAGE};
use wasmnode_proto::{Frame, Service};

use super::silence::{self, Silence, Verdict};
use super::{Dist, DistEvent, DownReason, Open, Peer};

pub(super) async fn read_loop(dist: &Dist, peer: &Peer, mut rd: OwnedReadHalf, mut raw: BytesMut, mut buf: BytesMut, mut opener: Open) -> DownReason {
    let timeout = dist.0.cfg.heartbeat_timeout;
    let max_frame = dist.0.cfg.max_frame;
    let mut reassembler = Reassembler::new(MAX_MESSAGE);
    let mut left = false;
    // The last frame was `Leaving`: the stream ending now is the peer's orderly close,
    // which it sends behind everything else it wrote (`Dist::leave`).
    let mut closing = false;
    let mut last_read = Instant::now();
    let mut judge = Silence::new(timeout);
    let silence = tokio::time::sleep_until(judge.first_look(last_read).into());
    tokio::pin!(silence);
    // `buf` holds frames' bytes, opened from the sealed records in `raw` (at first, those
    // opened with the handshake's last message).
    loop {
        // A record at a time: each is opened where it arrived, and its frames are taken
        // from there before the next is opened.
        loop {
            let len = match frame::frame_len(&buf, max_frame) {
                Ok(Some(len)) => len,
                Ok(None) => match opener.open(&mut raw, &mut buf) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return protocol_error(peer, e),
                },
                Err(e) => return protocol_error(peer, e),
            };
            buf.advance(frame::HEADER_LEN);
            let body = buf.split_to(len).freeze();
            let frame = match Frame::decode_body(body) {
                Ok(Frame::Fragment { stream, last, chunk }) => {
                    // Even a piece of a message: the stream did not end behind `Leaving`.
                    closing = false;
                    match reassembler.push(stream, last, chunk) {
                        Ok(Some(f)) => f,
                        Ok(None) => continue,
                        Err(e) => return protocol_error(peer, e),
                    }
                }
                Ok(f) => f,
                Err(e) => return protocol_error(peer, e),
            };
            closing = matches!(frame, Frame::Leaving);
            match frame {
                Frame::Heartbeat => {}
                Frame::Leaving => {
                    if !left {
                        let _ = dist.0.events.send(DistEvent::Leaving(peer.clone()));
                    }
                    left = true;
                }
                Frame::Ping { id, payload } => {
                    peer.send(Frame::Pong { id, payload });
                }
                Frame::Pong { id, .. } | Frame::Reply { id, .. } => peer.route_reply(id, frame),
                Frame::Request { id, service: Service::Registry, trace, ref body } if dist.0.fast_requests.get().is_some_and(|f| f(peer, id, trace, body)) => {}
                // One-way messages have no consumer yet (workers use requests): dropped,
                // unless a consumer asked for them.
                Frame::Send(_) if !dist.0.cfg.deliver_sends => {}
                other => {
                    let _ = dist.0.events.send(DistEvent::Frame(peer.clone(), other));
                }
            }
        }
        // Once its frames are all taken, the frames' buffer lets go of the record they
        // came from: `raw`, then the only owner of its memory (unless a frame is still
        // held elsewhere), reads into that memory again instead of fresh pages.
        if buf.is_empty() {
            buf = BytesMut::new();
        }
        // Room for the rest of the record being read (records run up to 512 KiB), and
        // for at least 16 KiB more. A read stops at the end of a record in progress, so
        // that once it is opened and its frames taken, `raw` is empty and its memory is
        // read into again from the start: no part of the next record to move there first.
        let missing = opener.missing(&raw);
        let room = missing.max(16 * 1024);
        if raw.capacity() - raw.len() < room {
            raw.reserve(room.max(64 * 1024));
        }
        let mut into = (&mut raw).limit(if missing > 0 { missing } else { usize::MAX });
        // One timer for the connection's life, moved only when it fires: cheaper than a
        // new timeout around every read.
        loop {
            tokio::select! {
                biased;
                r = rd.read_buf(&mut into) => match r {
                    // Only an end right behind its last `Leaving` (no part of a record or
                    // frame after it) tells that the peer sent everything: a reset or an
                    // end elsewhere may have cut replies off.
                    Ok(0) if closing && into.get_ref().is_empty() && buf.is_empty() => return DownReason::Left,
                    Ok(0) | Err(_) => return DownReason::ConnectionClosed,
                    Ok(_) => {
                        let silent = last_read.elapsed();
                        last_read = Instant::now();
                        peer.read_at(last_read);
                        if peer.0.kept.load(Ordering::Relaxed) {
                            peer.0.kept.store(false, Ordering::Relaxed);
                            info!(
                                peer = %peer.name(), silent_ms = silent.as_millis() as u64,
                                "heard from {} again after {} ms; its connection stayed up through the silence", peer.name(), silent.as_millis()
                            );
                        }
                        break;
                    }
                },
                _ = &mut silence => {
                    // Fired long after it was due: this process was paused (SIGSTOP, a VM
                    // steal, a debugger) or starved, and the bytes that arrived meanwhile
                    // may be unread. Read before judging: a live peer's heartbeats are
                    // there, or arrive within an interval.
                    let late = Instant::now().saturating_duration_since(silence.deadline().into_std());
                    if late >= dist.0.cfg.heartbeat_interval {
                        debug!("woke {late:?} late; reading from {} before trusting its silence", peer.name());
                        last_read = Instant::now();
                        silence.as_mut().reset((last_read + dist.0.cfg.heartbeat_interval * 2).into());
                        continue;
                    }
                    let now = Instant::now();
                    let verdict = judge.judge(now, last_read, peer.heard_by_others().map(|(at, _)| at));
                    match verdict {
                        Verdict::Wait { next, ask } | Verdict::Kept { next, ask, .. } => {
                            // Members know nothing of a hidden peer (the CLI): nobody to ask.
                            if ask && !peer.hidden() {
                                ask_others(dist, peer, timeout);
                            }
                            if let Verdict::Kept { heard_ago, first: true, .. } = verdict {
                                peer.0.kept.store(true, Ordering::Relaxed);
                                crate::metrics::global().silence_kept();
                                let by = peer.heard_by_others().map(|(_, by)| by).unwrap_or_default();
                                info!(
                                    peer = %peer.name(), by = %by, silent_ms = now.duration_since(last_read).as_millis() as u64,
                                    "{} has been silent past the heartbeat timeout, but {by} heard it {} ms ago: keeping its connection (the link, not the node, is failing)",
                                    peer.name(), heard_ago.as_millis()
                                );
                            }
                            silence.as_mut().reset(next.into());
                        }
                        Verdict::Down { kept_max } => {
                            // Woken from a pause that ended soon after the deadline, this task
                            // may not have heard yet of bytes (or the end) the socket holds:
                            // the runtime learns of them on its next poll. Ask the kernel.
                            if waiting(&rd) {
                                debug!("{} was silent past the timeout, but its bytes are waiting; reading them", peer.name());
                                silence.as_mut().reset((now + dist.0.cfg.heartbeat_interval * 2).into());
                                continue;
                            }
                            if kept_max {
                                warn!(
                                    peer = %peer.name(), reason = "heartbeat_timeout",
                                    "nothing from {} for {} ms while other members heard it: the link between the two is cut; giving the connection up",
                                    peer.name(), now.duration_since(last_read).as_millis()
                                );
                            }
                            peer.0.kept.store(false, Ordering::Relaxed);
                            return DownReason::HeartbeatTimeout;
                        }
                    }
                }
            }
        }
    }
}

/// The control request that asks a member when it last heard `node` (see `control`).
fn heard_question(node: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "op": "heard", "node": node }).to_string())
}

/// A member's answer: how long since it last read from the node, `None` when it has no
/// connection to it (an older node answers an error, which counts as nothing heard).
#[derive(serde::Deserialize)]
struct Heard {
    silent_ms: Option<u64>,
}

/// Asks up to [`silence::ASKED`] other members, chosen at random, when they last heard
/// `peer`; each answer within `within` moves [`Peer::heard_by_others`] forward.
fn ask_others(dist: &Dist, peer: &Peer, within: Duration) {
    use rand::seq::SliceRandom;
    let mut others: Vec<Peer> = dist.peers().into_iter().filter(|p| !p.hidden() && p.name() != peer.name()).collect();
    others.shuffle(&mut rand::rng());
    others.truncate(silence::ASKED);
    for other in others {
        let (peer, question) = (peer.clone(), heard_question(peer.name()));
        tokio::spawn(async move {
            let Ok(answer) = other.request(Service::Control, question, within).await else { return };
            if let Ok(Heard { silent_ms: Some(ms) }) = serde_json::from_slice(&answer) {
                if let Some(at) = Instant::now().checked_sub(Duration::from_millis(ms)) {
                    peer.heard_by_other(other.name(), at);
                }
            }
        });
    }
}

fn protocol_error(peer: &Peer, e: impl fmt::Display) -> DownReason {
    warn!("closing connection to {} ({}): {e}", peer.name(), peer.addr());
    DownReason::ProtocolError(e.to_string())
}

/// Whether the connection's socket holds something to read: bytes, its end, or an
/// error (a peek that takes nothing and does not wait).
fn waiting(rd: &OwnedReadHalf) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a peek of at most one byte into `byte`, on this connection's open socket.
    let n = unsafe { libc::recv(rd.as_ref().as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
}
