//! Round trips and error mapping through the safe wrapper. Tests that need
//! io_uring print SKIP and pass where it is unavailable.
use std::io::{Read, Write};
use std::mem::size_of;
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use zcn::{sys, BufferPool, Error, Event, Server, Stopper};

/// A server on 127.0.0.1:0, or None (after a SKIP line) without io_uring.
fn server_or_skip() -> Option<Server> {
    match Server::bind("127.0.0.1", 0) {
        Ok(s) => Some(s),
        Err(e) if e.is_io_uring_unavailable() => {
            eprintln!("SKIP: io_uring unavailable: {e} ({})", zcn::last_error_detail());
            None
        }
        Err(e) => panic!("Server::bind: {e} ({})", zcn::last_error_detail()),
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Accept,
    Data(usize),
    Close,
}

#[test]
fn echo_round_trip_on_a_dedicated_thread() {
    let (ready_tx, ready_rx) = mpsc::channel::<Option<(u16, Stopper)>>();
    let (seen_tx, seen_rx) = mpsc::channel::<Seen>();
    let server_thread = thread::spawn(move || {
        let Some(mut server) = server_or_skip() else {
            ready_tx.send(None).unwrap();
            return None;
        };
        server
            .set_handler(move |ctx, event| match event {
                Event::Accept(_) => seen_tx.send(Seen::Accept).unwrap(),
                Event::Data(fd, data) => {
                    seen_tx.send(Seen::Data(data.len())).unwrap();
                    ctx.send(fd, data).expect("echo send");
                }
                Event::Close(_) => seen_tx.send(Seen::Close).unwrap(),
                Event::Drain(_) => {}
            })
            .unwrap();
        server.start().unwrap();
        assert_eq!(server.start(), Err(Error::AlreadyStarted));
        ready_tx.send(Some((server.port(), server.stopper()))).unwrap();
        server.run().unwrap();
        // Let the Close of the client's connection arrive, if it has not.
        for _ in 0..50 {
            if server.stats().connections_active == 0 {
                break;
            }
            server.run_once_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        Some(server.stats())
    });

    let Some((port, stopper)) = ready_rx.recv().unwrap() else {
        server_thread.join().unwrap();
        return;
    };
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = {
        let mut w = client.try_clone().unwrap();
        let p = payload.clone();
        thread::spawn(move || w.write_all(&p).unwrap())
    };
    let mut back = vec![0u8; payload.len()];
    client.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == payload, "echoed bytes differ");
    drop(client);

    // Wait for Close before stopping, so the handler saw the whole life.
    let mut events = Vec::new();
    loop {
        let ev = seen_rx.recv_timeout(Duration::from_secs(10)).expect("events");
        let closed = ev == Seen::Close;
        events.push(ev);
        if closed {
            break;
        }
    }
    assert!(stopper.stop());
    let stats = server_thread.join().unwrap().unwrap();

    assert_eq!(events.first(), Some(&Seen::Accept));
    assert_eq!(events.last(), Some(&Seen::Close));
    let received: usize =
        events.iter().map(|e| if let Seen::Data(n) = e { *n } else { 0 }).sum();
    assert_eq!(received, payload.len());
    assert_eq!(stats.bytes_sent, payload.len() as u64);
    assert!(stats.sends_zero_copy > 0, "borrowed slices are sent without a copy");
    // A copy only where the policy packs a small slice behind queued data
    // (a receive's short tail, as when 16 KiB+ arrive at once and fill one
    // buffer and part of the next): every copy is such a coalesced one.
    assert_eq!(stats.sends_copied, stats.sends_coalesced);
    // The server is gone: a late stop is harmless.
    assert!(!stopper.stop());
}

#[test]
fn builtin_c_echo() {
    let Some(mut server) = server_or_skip() else { return };
    server.use_echo_handler().unwrap();
    server.start().unwrap();
    let port = server.port();
    let client = thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"ping").unwrap();
        let mut r = [0u8; 4];
        c.read_exact(&mut r).unwrap();
        r
    });
    while !client.is_finished() {
        server.run_once_timeout(Some(Duration::from_millis(20))).unwrap();
    }
    assert_eq!(&client.join().unwrap(), b"ping");
}

#[test]
#[should_panic(expected = "handler failed on purpose")]
fn panic_in_handler_resurfaces_from_run() {
    let Some(mut server) = server_or_skip() else {
        panic!("handler failed on purpose (skipped: no io_uring)");
    };
    server
        .set_handler(|_, event| {
            if let Event::Accept(_) = event {
                panic!("handler failed on purpose");
            }
        })
        .unwrap();
    server.start().unwrap();
    let port = server.port();
    let _client = thread::spawn(move || TcpStream::connect(("127.0.0.1", port)).map(|_| ()));
    let _ = server.run(); // the panic comes back out of here
}

#[test]
fn stop_before_run_returns_at_once() {
    let Some(mut server) = server_or_skip() else { return };
    server.start().unwrap();
    let stopper = server.stopper();
    thread::spawn(move || assert!(stopper.stop())).join().unwrap();
    server.run().unwrap();
}

#[test]
fn errors_map_to_variants() {
    let bad = Server::bind("not an address", 0);
    match bad {
        Err(Error::InvalidArgument) => {}
        Err(e) if e.is_io_uring_unavailable() => {}
        other => panic!("expected InvalidArgument, got {:?}", other.err()),
    }
    if let Some(first) = server_or_skip() {
        match Server::bind("127.0.0.1", first.port()) {
            Err(Error::Os(errno)) => {
                assert_eq!(errno, 98, "EADDRINUSE");
                assert_eq!(Error::Os(errno).name(), "EADDRINUSE");
                let io: std::io::Error = Error::Os(errno).into();
                assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
            }
            other => panic!("expected Os(EADDRINUSE), got {:?}", other.err()),
        }
    }
    assert_eq!(Error::from_code(sys::ZCN_OK), None);
    assert_eq!(Error::from_code(sys::ZCN_ERR_QUEUE_FULL), Some(Error::QueueFull));
    assert_eq!(Error::QueueFull.name(), "ZCN_ERR_QUEUE_FULL");
    assert!(Error::Exhausted.to_string().contains("ZCN_ERR_EXHAUSTED"));
    assert_eq!(Error::from_code(12345), Some(Error::Unknown(12345)));
}

#[test]
fn pool_buffers_come_back_on_drop() {
    let pool = BufferPool::new(100, 2).unwrap();
    assert_eq!(pool.buffer_size(), 4096);
    assert_eq!(pool.count(), 2);
    {
        let mut a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert!(pool.acquire().is_none(), "exhausted, never blocks");
        a[..5].copy_from_slice(b"hello");
        assert_eq!(&a[..5], b"hello");
        assert_eq!(b.len(), 4096);
        assert_eq!(pool.stats().in_use, 2);
    }
    let stats = pool.stats();
    assert_eq!((stats.in_use, stats.allocated, stats.freed, stats.failed), (0, 2, 2, 1));
    // Shared between threads.
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    if let Some(mut b) = pool.acquire() {
                        b[0] = 1;
                    }
                }
            });
        }
    });
    assert_eq!(pool.stats().in_use, 0);
    assert_eq!(BufferPool::new(0, 1).err(), Some(Error::InvalidArgument));
}

#[test]
fn version_and_layout_match_the_header() {
    let (major, minor, patch) = zcn::version();
    assert_eq!((major, minor, patch), (sys::ZCN_VERSION_MAJOR, sys::ZCN_VERSION_MINOR, sys::ZCN_VERSION_PATCH));
    assert_eq!(zcn::version_string(), format!("{major}.{minor}.{patch}"));
    // Sizes from the C compiler when tests/test_rust.py provides them
    // (ZCN_C_LAYOUT="ZCN_Config=88,..."); else the x86-64/aarch64 values.
    let layout = std::env::var("ZCN_C_LAYOUT").unwrap_or_else(|_| {
        "ZCN_Config=88,ZCN_PoolStats=56,ZCN_ServerStats=200,ZCN_Event=32,ZCN_Error=4".into()
    });
    for item in layout.split(',') {
        let (name, size) = item.split_once('=').unwrap();
        let size: usize = size.trim().parse().unwrap();
        let rust = match name.trim() {
            "ZCN_Config" => size_of::<sys::ZCN_Config>(),
            "ZCN_PoolStats" => size_of::<sys::ZCN_PoolStats>(),
            "ZCN_ServerStats" => size_of::<sys::ZCN_ServerStats>(),
            "ZCN_Event" => size_of::<sys::ZCN_Event>(),
            "ZCN_Error" => size_of::<sys::ZCN_Error>(),
            other => panic!("unknown type {other} in ZCN_C_LAYOUT"),
        };
        assert_eq!(rust, size, "sizeof({name}) differs between C and Rust");
    }
}
