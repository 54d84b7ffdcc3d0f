//! A TCP proxy on loopback that can turn into a black hole, for the
//! network locks' partition tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A TCP proxy on loopback in front of a server, that can turn into a
/// black hole: connections stay open and every byte is dropped, as behind
/// a silent network partition (no reset, no FIN). Connections made during
/// the partition are accepted, then silent.
pub struct BlackHole {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    dropping: Arc<AtomicBool>,
}

impl BlackHole {
    /// A proxy in front of the server at 127.0.0.1:`upstream`.
    pub fn in_front_of(upstream: u16) -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let dropping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&dropping);
        // Threads that end when their connections end (or with the test
        // process): the proxy serves only this test's clients.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if flag.load(Ordering::SeqCst) {
                    std::mem::forget(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    break;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let flag = Arc::clone(&flag);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) if !flag.load(Ordering::SeqCst) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => {} // dropped
                            }
                        }
                        // A connection ended before the partition is
                        // passed on; during it, nothing is.
                        if !flag.load(Ordering::SeqCst) {
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        }
                    });
                }
            }
        });
        BlackHole { port, dropping }
    }

    /// From now on, every byte in either direction is dropped.
    pub fn partition(&self) {
        self.dropping.store(true, Ordering::SeqCst);
    }
}
