//! A peer connection's two tasks on its owner shard, and how connections come to exist:
//! dialed for a swarm ([`dial`]) or accepted and adopted after the handshake ([`adopt`]).

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;

use compio::net::TcpStream;
use futures_util::future::{Either, select};
use shoal_proto::swarm::{ConnHandle, Direction, PieceDisposition, PieceVerdict};
use shoal_proto::wire::{Handshake, Message, PieceHeader};
use shoal_proto::{Instant, PeerId, PieceIndex};

use super::stripe::{ConnSlot, REQUESTS_TIMED_MAX, Stripe};
use crate::engine::ConnPermit;
use crate::stats::{self, PeerKind};
use crate::transport::{PeerConn, PeerReader, PeerWriter, Verdict};

/// Runs `f` unless the connection closes first (then `None`; `f` is dropped, which poisons
/// the transport half it was using: fine, the connection is going away).
async fn unless_closed<F: Future>(slot: &ConnSlot, f: F) -> Option<F::Output> {
    match select(pin!(f), pin!(slot.closed())).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// Opens a connection to `peer`, which the swarm asked for.
pub(crate) async fn dial(stripe: Rc<Stripe>, peer: PeerId) {
    let engine = std::sync::Arc::clone(&stripe.shard.engine);
    let addr = stripe.io.addrs.borrow().get(&peer).copied();
    let permit = addr.and_then(|_| engine.try_conn_permit(Some(&stripe.io.shared)));
    let stream = match (addr, permit) {
        (Some(addr), Some(permit)) => {
            let connect = compio::runtime::time::timeout(
                engine.config.dial_timeout,
                TcpStream::connect(addr),
            )
            .await;
            match connect {
                Ok(Ok(stream)) => {
                    match set_congestion(&stream, engine.config.tcp_congestion.as_deref()) {
                        Ok(()) => Some((stream, permit)),
                        Err(error) => {
                            tracing::debug!(%peer, %addr, %error, "dial: TCP_CONGESTION refused");
                            None
                        }
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %addr, %error, "dial failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, %addr, "dial timed out");
                    None
                }
            }
        }
        (None, _) => {
            tracing::debug!(%peer, "dial: no address known");
            None
        }
        (Some(_), None) => {
            tracing::debug!(%peer, "dial: at the connection limit");
            None
        }
    };
    let conn = stream.and_then(|(stream, permit)| {
        match PeerConn::new(stream, engine.config.upload_path) {
            Ok(conn) => Some((conn, permit)),
            Err(error) => {
                tracing::debug!(%peer, %error, "dial: socket setup failed");
                None
            }
        }
    });
    let Some((conn, permit)) = conn else {
        stats::add(&stripe.shard.counters().dials_failed, 1);
        stripe.input(|state, now| state.swarm.handle_dial_failed(now, peer));
        return;
    };
    if stripe.is_stopped() {
        return;
    }
    let slot = Rc::new(ConnSlot::new(permit));
    let handle = stripe.input(|state, now| {
        match state
            .swarm
            .handle_connected(now, Direction::Outbound, Some(peer))
        {
            Ok(handle) => {
                state.conns.insert(handle, Rc::clone(&slot));
                Some(handle)
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "dialed connection refused by the swarm");
                None
            }
        }
    });
    if let Some(handle) = handle {
        start(stripe, handle, slot, conn);
    }
}

/// Sets the configured congestion control on a dialled stream (accepted ones inherit the
/// listener's).
fn set_congestion(stream: &TcpStream, name: Option<&str>) -> std::io::Result<()> {
    match name {
        Some(name) => socket2::SockRef::from(stream).set_tcp_congestion(name.as_bytes()),
        None => Ok(()),
    }
}

/// Takes an accepted connection whose handshake (for this stripe) was already read.
pub(crate) fn adopt(
    stripe: Rc<Stripe>,
    stream: TcpStream,
    handshake: Handshake,
    received: Vec<u8>,
    permit: ConnPermit,
) {
    if stripe.is_stopped() {
        return;
    }
    let upload_path = stripe.shard.engine.config.upload_path;
    let conn = match PeerConn::with_received(stream, received, upload_path) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::debug!(%error, "accepted connection: socket setup failed");
            return;
        }
    };
    let slot = Rc::new(ConnSlot::new(permit));
    slot.kind.set(if handshake.is_origin {
        PeerKind::Origin
    } else {
        PeerKind::Agent
    });
    let peer = handshake.peer_id;
    let handle = stripe.input(|state, now| {
        match state
            .swarm
            .handle_connected(now, Direction::Inbound, Some(peer))
        {
            Ok(handle) => {
                state.conns.insert(handle, Rc::clone(&slot));
                state
                    .swarm
                    .handle_message(now, handle, Message::Handshake(handshake));
                Some(handle)
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "accepted connection refused by the swarm");
                None
            }
        }
    });
    if let Some(handle) = handle {
        start(stripe, handle, slot, conn);
    }
}

fn start(stripe: Rc<Stripe>, handle: ConnHandle, slot: Rc<ConnSlot>, conn: PeerConn) {
    let counters = stripe.shard.counters();
    stats::add(&counters.connections_open, 1);
    stats::add(&counters.connections_opened, 1);
    let (reader, writer) = conn.into_split();
    let (stripe_w, slot_w) = (Rc::clone(&stripe), Rc::clone(&slot));
    compio::runtime::spawn(async move { write_loop(stripe_w, handle, slot_w, writer).await })
        .detach();
    compio::runtime::spawn(async move {
        let result = read_loop(&stripe, handle, &slot, reader).await;
        if let Err(error) = result {
            tracing::debug!(digest = %stripe.io.shared.digest, %error, "connection ended");
            disconnect(&stripe, handle, &slot);
        }
        stats::sub(&stripe.shard.counters().connections_open, 1);
    })
    .detach();
}

/// The transport failed: tell the swarm (unless it closed the connection itself) and stop
/// both tasks.
fn disconnect(stripe: &Rc<Stripe>, handle: ConnHandle, slot: &ConnSlot) {
    if slot.closed.get() {
        return;
    }
    stripe.input(|state, now| {
        state.conns.remove(&handle);
        state.swarm.handle_disconnected(now, handle);
    });
    slot.close();
}

/// Messages and piece payloads in. `Ok` when the connection was closed by the swarm.
async fn read_loop(
    stripe: &Rc<Stripe>,
    handle: ConnHandle,
    slot: &ConnSlot,
    mut reader: PeerReader,
) -> Result<(), String> {
    loop {
        let Some(received) = unless_closed(slot, reader.recv()).await else {
            return Ok(());
        };
        let message = received.map_err(|e| e.to_string())?;
        match message {
            Message::Piece(header) => {
                note_answer(stripe, slot, header.piece);
                let disposition =
                    stripe.input(|state, now| state.swarm.handle_piece_header(now, handle, header));
                match disposition {
                    PieceDisposition::Accept => {
                        if !receive_piece(stripe, handle, slot, &mut reader, header).await? {
                            return Ok(());
                        }
                    }
                    PieceDisposition::Discard => {
                        let Some(skipped) = unless_closed(slot, reader.skip_piece_payload()).await
                        else {
                            return Ok(());
                        };
                        skipped.map_err(|e| e.to_string())?;
                    }
                    PieceDisposition::Closed => return Ok(()),
                }
            }
            Message::Handshake(handshake) => {
                slot.kind.set(if handshake.is_origin {
                    PeerKind::Origin
                } else {
                    PeerKind::Agent
                });
                let message = Message::Handshake(handshake);
                stripe.input(|state, now| state.swarm.handle_message(now, handle, message));
            }
            other => stripe.input(|state, now| state.swarm.handle_message(now, handle, other)),
        }
    }
}

/// Receives, verifies and stores one accepted piece. `Ok(false)` when the connection closed
/// meanwhile.
async fn receive_piece(
    stripe: &Rc<Stripe>,
    handle: ConnHandle,
    slot: &ConnSlot,
    reader: &mut PeerReader,
    header: PieceHeader,
) -> Result<bool, String> {
    let shard = &stripe.shard;
    let engine = &shard.engine;
    let io = &stripe.io;
    let piece = header.piece;
    let length = header.length as usize;
    let Some(download) = io.download() else {
        return Err(format!("{piece} offered for a blob this host already has"));
    };
    if unless_closed(slot, engine.ingress.acquire(length as u64))
        .await
        .is_none()
    {
        return Ok(false);
    }
    let Some(budget) = unless_closed(slot, shard.recv_budget.acquire(length)).await else {
        return Ok(false);
    };
    let verifier = io.shared.metainfo.piece_verifier(piece);
    let buf = Vec::with_capacity(length);
    let Some((verdict, buf)) = unless_closed(slot, reader.recv_piece_payload(verifier, buf)).await
    else {
        return Ok(false);
    };
    let verdict = verdict.map_err(|e| e.to_string())?;
    let counters = shard.counters();
    if verdict == Verdict::Corrupt {
        stats::add(&counters.pieces_failed, 1);
        io.shared.count_failed();
        tracing::warn!(digest = %io.shared.digest, %piece, "piece failed its SHA-256");
        stripe.input(|state, now| {
            state
                .swarm
                .handle_piece(now, handle, piece, PieceVerdict::Invalid)
        });
        return Ok(true);
    }
    // Stored even if the connection closes meanwhile: verified bytes are ours.
    let (written, buf) = download.write_piece(piece, buf).await;
    drop(buf);
    drop(budget);
    if let Err(error) = written {
        shard.fail_blob(&io.shared, &error.to_string());
        return Ok(false);
    }
    stats::add(&counters.pieces_verified, 1);
    counters.bytes_in(slot.kind.get(), length as u64);
    io.shared.count_fetched(piece);
    stripe.input(|state, now| {
        state
            .swarm
            .handle_piece(now, handle, piece, PieceVerdict::Valid)
    });
    shard.piece_stored(io);
    Ok(true)
}

/// The outbox out: frames, and piece payloads from the store.
async fn write_loop(
    stripe: Rc<Stripe>,
    handle: ConnHandle,
    slot: Rc<ConnSlot>,
    mut writer: PeerWriter,
) {
    loop {
        let (message, queued) = loop {
            if slot.closed.get() {
                return;
            }
            if let Some(entry) = slot.outbox.borrow_mut().pop_front() {
                break entry;
            }
            let listener = slot.wake.listen();
            if slot.closed.get() || !slot.outbox.borrow().is_empty() {
                continue;
            }
            listener.await;
        };
        let sent = match message {
            Message::Piece(header) => send_piece(&stripe, handle, &slot, &mut writer, header).await,
            other => match unless_closed(&slot, writer.send_message(&other)).await {
                None => return,
                Some(result) => {
                    if let (Ok(()), Message::Request(piece)) = (&result, &other) {
                        note_request(&stripe, &slot, *piece, queued);
                    }
                    result.map_err(|e| e.to_string())
                }
            },
        };
        if let Err(error) = sent {
            tracing::debug!(digest = %stripe.io.shared.digest, %error, "send failed");
            disconnect(&stripe, handle, &slot);
            return;
        }
    }
}

/// A request reached the socket: how long it waited, and when, to time its answer.
fn note_request(stripe: &Stripe, slot: &ConnSlot, piece: PieceIndex, queued: Instant) {
    let now = stripe.shard.engine.clock.now();
    let counters = stripe.shard.counters();
    stats::add(&counters.requests_sent, 1);
    stats::add(
        &counters.request_queue_us,
        micros(now.saturating_duration_since(queued)),
    );
    let mut requested = slot.requested.borrow_mut();
    // A piece asked again (after a Reject, say) is timed from the new request.
    requested.retain(|(p, _)| *p != piece);
    if requested.len() == REQUESTS_TIMED_MAX {
        requested.pop_front();
    }
    requested.push_back((piece, now));
}

/// A piece header arrived: if this connection requested it, how long the answer took.
fn note_answer(stripe: &Stripe, slot: &ConnSlot, piece: PieceIndex) {
    let mut requested = slot.requested.borrow_mut();
    let Some(at) = requested.iter().position(|(p, _)| *p == piece) else {
        return;
    };
    let Some((_, sent)) = requested.remove(at) else {
        return;
    };
    let now = stripe.shard.engine.clock.now();
    let counters = stripe.shard.counters();
    stats::add(&counters.requests_answered, 1);
    stats::add(
        &counters.request_answer_us,
        micros(now.saturating_duration_since(sent)),
    );
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

async fn send_piece(
    stripe: &Rc<Stripe>,
    handle: ConnHandle,
    slot: &ConnSlot,
    writer: &mut PeerWriter,
    header: PieceHeader,
) -> Result<(), String> {
    let engine = &stripe.shard.engine;
    if unless_closed(slot, engine.egress.acquire(u64::from(header.length)))
        .await
        .is_none()
    {
        return Ok(());
    }
    let (file, offset) = stripe.io.piece_file(header.piece)?;
    let Some(sent) = unless_closed(slot, writer.send_piece(header, file, offset)).await else {
        return Ok(());
    };
    sent.map_err(|e| e.to_string())?;
    let counters = stripe.shard.counters();
    stats::add(&counters.pieces_uploaded, 1);
    counters.bytes_out(slot.kind.get(), u64::from(header.length));
    stripe.io.shared.count_uploaded(u64::from(header.length));
    stripe.input(|state, now| state.swarm.handle_piece_sent(now, handle, header.piece));
    Ok(())
}
