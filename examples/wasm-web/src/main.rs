//! A web server as a Bramble service, in WebAssembly: the same `.wasm` file serves on an
//! armv7 Pi 2, an aarch64 Pi 4 and an x86_64 PC. The agent binds the replica's port and
//! hands it over as descriptor 3 (WASI preview 1 has no way to open a socket); this
//! accepts on it, one connection at a time, and answers every `GET` with a page naming
//! the replica and node (`BRAMBLE_SERVICE`, `BRAMBLE_REPLICA`, `BRAMBLE_NODE`), `/health`
//! with `ok`.
//!
//! Build: `cargo build --release --target wasm32-wasip1` (in this directory).
//! Run: `bramble service create hello --replicas 2 --port 8200 --wasm
//! target/wasm32-wasip1/release/wasm-web.wasm`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::FromRawFd;

/// The largest request head read (the rest of a bigger one is refused).
const MAX_HEAD: usize = 8 * 1024;

fn main() {
    // SAFETY: descriptor 3 is the listening socket the host preopened for this module,
    // and nothing else in the module owns it.
    let listener = unsafe { TcpListener::from_raw_fd(3) };
    let name = format!(
        "{}.{}",
        std::env::var("BRAMBLE_SERVICE").unwrap_or_else(|_| "wasm-web".to_string()),
        std::env::var("BRAMBLE_REPLICA").unwrap_or_else(|_| "0".to_string())
    );
    let node = std::env::var("BRAMBLE_NODE").unwrap_or_else(|_| "?".to_string());
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_string());
    eprintln!("{name} on {node}: serving");
    let mut served: u64 = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                served += 1;
                if let Err(error) = answer(stream, &name, &node, &greeting, served) {
                    eprintln!("{name}: a connection failed: {error}");
                }
            }
            Err(error) => eprintln!("{name}: accept: {error}"),
        }
    }
}

/// Reads one request head and answers it; the connection is closed afterwards.
fn answer(
    mut stream: TcpStream,
    name: &str,
    node: &str,
    greeting: &str,
    served: u64,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "too large\n");
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    match (method, path) {
        ("GET" | "HEAD", "/health") => respond(&mut stream, "200 OK", "ok\n"),
        ("GET" | "HEAD", _) => respond(
            &mut stream,
            "200 OK",
            &format!("{greeting} from {name} on {node} (WebAssembly), request {served}\n"),
        ),
        _ => respond(&mut stream, "405 Method Not Allowed", "GET only\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}
