//! Echo round trip: the server runs its loop on a dedicated thread (it is
//! created there, since one thread drives a server); the main thread is the
//! client, then stops the server through a Stopper.
//!
//!   ZCN_LIB_DIR=$PWD/build cargo run --offline --example echo [-- MESSAGE]
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;

use zcn::{Event, Server, Stopper};

fn main() {
    let message = std::env::args().nth(1).unwrap_or_else(|| "hello from Rust".to_string());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(u16, Stopper), zcn::Error>>();

    let server_thread = thread::spawn(move || -> Result<u64, zcn::Error> {
        let mut server = match Server::bind("127.0.0.1", 0) {
            Ok(server) => server,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return Err(e);
            }
        };
        let mut echoed = 0u64;
        server.set_handler(move |ctx, event| match event {
            Event::Accept(fd) => println!("server: connection {fd}"),
            // `data` borrows the receive buffer; sending it back moves the
            // buffer to the send queue without a copy.
            Event::Data(fd, data) => {
                echoed += data.len() as u64;
                if let Err(e) = ctx.send(fd, data) {
                    eprintln!("server: send: {e}");
                    let _ = ctx.close(fd);
                }
            }
            Event::Close(fd) => println!("server: closed {fd} after {echoed} bytes echoed"),
            Event::Drain(_) => {}
        })?;
        server.start()?;
        let _ = ready_tx.send(Ok((server.port(), server.stopper())));
        server.run()?; // until the Stopper is used
        Ok(server.stats().bytes_sent)
    });

    let (port, stopper) = match ready_rx.recv().expect("server thread ended early") {
        Ok(ready) => ready,
        Err(e) if e.is_io_uring_unavailable() => {
            eprintln!("SKIP: io_uring unavailable here: {e} ({})", zcn::last_error_detail());
            let _ = server_thread.join();
            return;
        }
        Err(e) => panic!("server: {e}"),
    };

    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.write_all(message.as_bytes()).expect("write");
    let mut reply = vec![0u8; message.len()];
    client.read_exact(&mut reply).expect("read");
    drop(client);
    println!("client: sent {:?}, got {:?}", message, String::from_utf8_lossy(&reply));
    assert_eq!(reply, message.as_bytes());

    stopper.stop();
    let bytes_sent = server_thread.join().expect("server thread panicked").expect("server");
    println!("zero_copy_net {} echo ok ({bytes_sent} bytes sent by the server)", zcn::version_string());
}
