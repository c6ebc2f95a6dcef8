//! A connection's writer task: batches what senders queued into one sealed write,
//! interleaves a large message's fragments with small frames, and fills silences with
//! heartbeats.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};
use wasmnode_proto::frame::Fragmenter;
use wasmnode_proto::seal::{Plain, Sealed};
use wasmnode_proto::Frame;

use super::peer::is_answer;
use super::wire::Seal;
use super::{DownReason, Out, Peer, Unread};

/// Frames with payloads at least this large go to the writer task, even when nothing is
/// queued (their sender does not seal and write them itself); the writer seals their
/// payloads from their own buffers.
pub(super) const ZERO_COPY_MIN: usize = wasmnode_proto::seal::BY_REFERENCE;

/// The most plaintext the writer seals before it writes.
const SEAL_AHEAD: usize = 256 * 1024;

/// The most queued frames the writer takes at once. Small frames from one batch go out
/// in one record and one write (1,024 of 16 bytes: 21 KiB), so when senders queue faster
/// than the socket drains, fewer and larger writes carry them: one-way 16-byte messages
/// ran 5-9 % faster than with 256 (docs/benchmarks.md). Large ones are still written a
/// [`SEAL_AHEAD`] at a time.
const BATCH: usize = 1024;

/// The most small frames written between two fragments of a large message, so that
/// the large one still moves while small ones keep coming.
const BETWEEN_FRAGMENTS: usize = 256;

/// The connection's writer task: writes what senders queued (see [`Peer::send`]), large
/// messages one fragment at a time between small frames, and a heartbeat when the
/// connection has been quiet for a heartbeat interval. A write (a few hundred KiB at
/// most) that has not gone out within `stall` (the heartbeat timeout) ends the
/// connection: the peer does not read, or reads so little that every heartbeat this
/// node sends it would be late.
///
/// `peer.queued` counts frames the senders handed over and this task has not finished
/// writing; it comes down only when this task is idle, so a sender writes a frame itself
/// only when everything sent before it is on the wire.
pub(super) async fn write_loop(peer: Peer, wr: Arc<OwnedWriteHalf>, rx: mpsc::UnboundedReceiver<Out>, heartbeat: Duration, stall: Duration) -> DownReason {
    match write_queued(&peer, &wr, rx, heartbeat, stall).await {
        Ok(reason) => reason,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            let why = Unread::Stalled(stall);
            warn!(peer = %peer.name(), reason = "not_reading", "disconnecting {}: it does not read ({why})", peer.name());
            DownReason::NotReading(why)
        }
        Err(_) => DownReason::ConnectionClosed,
    }
}

/// [`write_loop`], with the failed write's error.
async fn write_queued(
    peer: &Peer,
    wr: &OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    heartbeat: Duration,
    stall: Duration,
) -> std::io::Result<DownReason> {
    // The frames of the next write, sealed into `buf` just before it (large payloads
    // are read from their own buffers as they are sealed).
    let mut plain = Plain::with_capacity(16 * 1024);
    let mut buf = Sealed::default();
    // Grows towards `BATCH` only on a connection whose senders queue that deep.
    let mut batch = Vec::new();
    // Large messages being sent, with their payload's length when they are answers.
    let mut bulk: VecDeque<(Fragmenter, Option<usize>)> = VecDeque::new();
    let mut next_stream = 0u32;
    // Frames taken from the queue (or heartbeats this task queued itself) and not yet written.
    let mut taken = 0usize;
    // Fires when the connection may have been quiet for a heartbeat interval.
    let quiet = tokio::time::sleep(heartbeat);
    tokio::pin!(quiet);
    loop {
        if bulk.is_empty() {
            if taken > 0 {
                peer.0.queued.fetch_sub(taken, Ordering::AcqRel);
                taken = 0;
            }
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return Ok(DownReason::LocalShutdown);
                    }
                    taken += n;
                }
                _ = &mut quiet => {
                    let silent = peer.quiet_for();
                    if silent >= heartbeat {
                        // Counted as queued, under the senders' lock, so that no sender
                        // writes while this task does.
                        let _direct = peer.0.direct.lock().unwrap();
                        peer.0.queued.fetch_add(1, Ordering::AcqRel);
                        taken += 1;
                        add(&peer.0.sealer, &Frame::Heartbeat, &mut plain, &mut buf);
                        quiet.as_mut().reset((Instant::now() + heartbeat).into());
                    } else {
                        quiet.as_mut().reset((Instant::now() + (heartbeat - silent)).into());
                        continue;
                    }
                }
            }
        } else {
            // A large message is in flight: take whatever small frames wait, then one fragment.
            while batch.len() < BETWEEN_FRAGMENTS {
                match rx.try_recv() {
                    Ok(out) => {
                        batch.push(out);
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        let mut close = None;
        for out in batch.drain(..) {
            match out {
                // A large answer leaves the count once its last fragment is written.
                Out::Frame(f) if Fragmenter::needed(&f) => {
                    next_stream = next_stream.wrapping_add(1);
                    bulk.push_back((Fragmenter::new(next_stream, &f), is_answer(&f).then(|| f.payload_len())));
                }
                Out::Frame(f) => {
                    if is_answer(&f) {
                        peer.release(f.payload_len());
                    }
                    add(&peer.0.sealer, &f, &mut plain, &mut buf);
                    // A long batch goes out a slice at a time: what was sealed is still in
                    // the cache when the kernel copies it, and the buffer stays small.
                    if plain.len() + buf.gathered() >= SEAL_AHEAD {
                        seal(&peer.0.sealer, &mut plain, &mut buf);
                        write_all(peer, wr, &mut buf, stall).await?;
                        peer.wrote();
                    }
                }
                Out::Raw(rest) => {
                    // Sealed already: the end of a record a sender began writing.
                    seal(&peer.0.sealer, &mut plain, &mut buf);
                    buf.extend_from_slice(&rest);
                }
                Out::Close(reason) => {
                    close = Some(reason);
                    break;
                }
            }
        }
        if close.is_none() {
            if let Some((fragments, len)) = bulk.front_mut() {
                match fragments.next() {
                    Some(piece) => add(&peer.0.sealer, &piece, &mut plain, &mut buf),
                    None => {
                        if let Some(len) = *len {
                            peer.release(len);
                        }
                        bulk.pop_front();
                    }
                }
            }
        }
        seal(&peer.0.sealer, &mut plain, &mut buf);
        if !buf.is_empty() {
            write_all(peer, wr, &mut buf, stall).await?;
            peer.wrote();
        }
        if let Some(reason) = close {
            // SAFETY: shutdown(2) on the socket's own descriptor, which `wr` keeps open.
            unsafe {
                libc::shutdown(AsRef::<TcpStream>::as_ref(wr).as_raw_fd(), libc::SHUT_WR);
            }
            return Ok(reason);
        }
    }
}

/// Adds a frame to the next write. A small one is encoded straight into `buf`, into the
/// record gathered there, and sealed in place with it ([`Seal::gather`]), so its bytes
/// are written once before the kernel copies them; one with a large payload goes to
/// `plain`, which seals that payload from its own buffer, and so does every frame after
/// it in this write, to keep them in order. Under TLS, every frame goes to `plain`.
fn add(sealer: &Seal, frame: &Frame, plain: &mut Plain, buf: &mut Sealed) {
    if plain.is_empty() && frame.payload_len() < ZERO_COPY_MIN && sealer.gathers() {
        sealer.gather(frame, buf);
    } else {
        plain.push(frame);
    }
}

/// Seals what the next write holds, in the order it was added: the gathered record,
/// then `plain`'s frames. An empty `plain` is left alone: under TLS, sealing nothing
/// would still take the connection's lock.
fn seal(sealer: &Seal, plain: &mut Plain, buf: &mut Sealed) {
    sealer.seal_gathered(buf);
    if !plain.is_empty() {
        sealer.seal_plain(plain, buf);
        plain.clear();
    }
}

/// Writes all of `buf` (sealed records, in order), leaving it empty for the next batch
/// with its memory kept; a [`std::io::ErrorKind::TimedOut`] error when it has not all
/// gone out within `stall` (a peer that takes a byte now and then does not hold it up
/// for longer). While the peer is silent too (a link losing packets: TCP's
/// retransmissions hold this side's bytes as well), the write waits on: the reader
/// decides, and ends the connection unless other members still hear the peer. Once the
/// peer is heard again, the write waits on for as long as the silence lasted (`stall`
/// at least): TCP's retransmission timer backed off through the silence, and the next
/// retransmission of what it holds may come up to about that long after the link heals.
async fn write_all(peer: &Peer, wr: &OwnedWriteHalf, buf: &mut Sealed, stall: Duration) -> std::io::Result<()> {
    let mut deadline = tokio::time::Instant::now() + stall;
    let mut waited_on = false;
    let mut resumed = false;
    let mut longest = Duration::ZERO;
    while !buf.is_empty() {
        match wr.try_write(buf.bytes()) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match tokio::time::timeout_at(deadline, wr.writable()).await {
                Ok(ready) => ready?,
                // A peer silent too is the reader's to judge (down, or kept while others
                // hear it): a link losing packets holds both directions at once, and the
                // write must not end what the reader keeps, by the few milliseconds
                // between their two timers. A peer that talks and does not read is not.
                Err(_) if peer.0.kept.load(Ordering::Relaxed) || peer.silent_for() >= stall / 3 => {
                    if !waited_on {
                        waited_on = true;
                        info!(
                            peer = %peer.name(),
                            "a write to {} has not gone out within {} ms; waiting on, since it is silent too and other members are asked whether they still hear it",
                            peer.name(),
                            stall.as_millis()
                        );
                    }
                    longest = longest.max(peer.silent_for());
                    deadline = tokio::time::Instant::now() + stall / 4;
                }
                Err(_) if waited_on && !resumed => {
                    resumed = true;
                    deadline = tokio::time::Instant::now() + stall.max(longest);
                }
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
