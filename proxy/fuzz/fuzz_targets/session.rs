//! Session-level: arbitrary client bytes against the real proxy (`pgsteer::start`, in this
//! process) in front of a scripted backend. Each input is one client connection: the proxy must
//! never panic, and must close the connection once the client has sent its bytes and shut down its
//! sending side (no hang, no leaked session: a leak shows up as descriptor exhaustion and then as a
//! hang in a later input).
//!
//! Input: `flags` byte, then the client's bytes.
//! - bit 7: prepend a valid StartupMessage (so the fuzzer reaches authentication and the relay at
//!   once); bit 6: with `options=-c pgsteer.pod=pg-0` (pinning, option stripping);
//! - bits 0–2: how the backend authenticates: trust, cleartext, md5, SCRAM (three round trips), a
//!   FATAL at startup, NegotiateProtocolVersion then trust;
//! - bits 3–4: the transaction status the backend reports (`I`, `T`, `E`);
//! - bit 5: the backend dies after two messages of the session.
//!
//! The backend answers Query with a RowDescription, up to 7 DataRows of up to 32 KiB each (so the
//! relay streams frames across its 16 KiB buffers) and CommandComplete; Sync, Parse, Bind,
//! Describe, Execute and Close get their usual answers; Terminate closes. Discovery is a fake
//! Patroni REST API naming the backend as leader (no SQL probe).
//!
//! Seeds: `flags` 0x00 + a recorded client stream (`protocol/tests/fixtures/*.c2s.bin`), or 0x80
//! + frames. Run from `proxy/fuzz`: `cargo fuzz run --sanitizer none session`.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// The proxy, the scripted backend and the fake Patroni, started once per process.
struct Harness {
    rt: Runtime,
    rw: SocketAddr,
}

/// The flags byte of the input being run (one input at a time).
static SCRIPT: AtomicU8 = AtomicU8::new(0);

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let rw = rt.block_on(start());
        Harness { rt, rw }
    })
}

async fn start() -> SocketAddr {
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_port = backend.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = backend.accept().await {
            let script = SCRIPT.load(Ordering::Relaxed);
            tokio::spawn(serve_backend(s, script));
        }
    });
    let patroni = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let patroni_url = format!("http://{}", patroni.local_addr().expect("addr"));
    let doc = format!(
        "{{\"members\": [{{\"name\": \"pg-0\", \"role\": \"leader\", \"state\": \"running\", \
         \"host\": \"127.0.0.1\", \"port\": {backend_port}, \"timeline\": 1}}]}}"
    );
    tokio::spawn(async move {
        while let Ok((mut s, _)) = patroni.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp =
                    format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{doc}");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let text = format!(
        "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\n\
         [discovery]\nsource = \"patroni\"\n\
         [discovery.patroni]\nendpoints = [\"{patroni_url}\"]\npoll_interval = \"1h\"\n\
         [routing]\nhold_timeout = \"20ms\"\nconnect_timeout = \"1s\"\n\
         [limits]\nstartup_timeout = \"2s\"\nmax_message_bytes = 65536\n"
    );
    let config = pgsteer::Config::parse(&text, std::iter::empty()).expect("config");
    let running = pgsteer::start(config, pgsteer::Shutdown::new())
        .await
        .expect("proxy starts");
    let rw = running.rw.expect("rw");
    tokio::time::timeout(
        Duration::from_secs(30),
        running.topology().wait_for(|t| t.primary().is_some()),
    )
    .await
    .expect("the fake Patroni's leader becomes primary")
    .expect("discovery runs");
    // Keep the proxy for the life of the process.
    std::mem::forget(running);
    rw
}

fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn ready(out: &mut Vec<u8>, script: u8) {
    let status = match (script >> 3) & 3 {
        1 => b'T',
        2 => b'E',
        _ => b'I',
    };
    frame(out, b'Z', &[status]);
}

/// Reads one tagged frame from the proxy; `None` on close or garbage.
async fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if !(4..=1 << 20).contains(&len) {
                return None;
            }
            if buf.len() > len {
                let tag = buf[0];
                buf.advance(5);
                let body = buf.split_to(len - 4).to_vec();
                return Some((tag, body));
            }
        }
        match s.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The scripted server side of one proxied session.
async fn serve_backend(mut s: TcpStream, script: u8) {
    let mut buf = BytesMut::new();
    // The startup packet (untagged).
    loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if !(8..=10_000).contains(&len) {
                return;
            }
            if buf.len() >= len {
                buf.advance(len);
                break;
            }
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let mut out = Vec::new();
    let ok = |out: &mut Vec<u8>| {
        frame(out, b'R', &0u32.to_be_bytes());
        frame(out, b'S', b"server_version\x0015.0\x00");
        frame(out, b'S', b"client_encoding\x00UTF8\x00");
        frame(out, b'K', &[0, 0, 0, 42, 1, 2, 3, 4]);
        frame(out, b'Z', b"I");
    };
    let mut exchanges: &[&[u8]] = &[];
    match script & 7 {
        1 => {
            frame(&mut out, b'R', &3u32.to_be_bytes());
            exchanges = &[b""];
        }
        2 => {
            frame(&mut out, b'R', &[0, 0, 0, 5, 9, 8, 7, 6]);
            exchanges = &[b""];
        }
        3 => {
            frame(&mut out, b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0");
            exchanges = &[
                b"\0\0\0\x0br=abc,s=c2FsdA==,i=4096",
                b"\0\0\0\x0cv=c2lnbmF0dXJl",
            ];
        }
        4 => {
            frame(
                &mut out,
                b'E',
                b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0",
            );
            let _ = s.write_all(&out).await;
            return;
        }
        5 => {
            frame(&mut out, b'v', b"\0\0\0\0\0\0\0\x01_pq_.x\0");
            ok(&mut out);
        }
        _ => ok(&mut out),
    }
    if s.write_all(&out).await.is_err() {
        return;
    }
    // Authentication round trips: each client `p` gets the next server message, then AuthOk.
    if script & 7 != 0 && script & 7 < 4 {
        for (i, reply) in exchanges.iter().enumerate() {
            match read_frame(&mut s, &mut buf).await {
                Some((b'p', _)) => {}
                _ => return,
            }
            let mut out = Vec::new();
            if i + 1 < exchanges.len() || !reply.is_empty() {
                frame(&mut out, b'R', reply);
            }
            if i + 1 == exchanges.len() {
                ok(&mut out);
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }
    let mut seen = 0;
    while let Some((tag, body)) = read_frame(&mut s, &mut buf).await {
        seen += 1;
        if script & 0x20 != 0 && seen > 2 {
            return;
        }
        let mut out = Vec::new();
        match tag {
            b'Q' => {
                frame(
                    &mut out,
                    b'T',
                    b"\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
                );
                let rows = body.len() % 8;
                let size = usize::from(body.first().copied().unwrap_or(0)) * 128;
                let mut row = vec![0u8, 1];
                row.extend_from_slice(&(size as u32).to_be_bytes());
                row.resize(6 + size, b'x');
                for _ in 0..rows {
                    frame(&mut out, b'D', &row);
                }
                frame(&mut out, b'C', b"SELECT 1\0");
                ready(&mut out, script);
            }
            b'P' => frame(&mut out, b'1', b""),
            b'B' => frame(&mut out, b'2', b""),
            b'C' => frame(&mut out, b'3', b""),
            b'D' => frame(&mut out, b'n', b""),
            b'E' => frame(&mut out, b'C', b"SELECT 0\0"),
            b'S' => ready(&mut out, script),
            b'X' => return,
            _ => {}
        }
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn startup_packet(pinned: bool) -> Vec<u8> {
    let mut body = 0x0003_0000u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0fuzz\0database\0fuzz\0");
    if pinned {
        body.extend_from_slice(b"options\0-c pgsteer.pod=pg-0\0");
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    SCRIPT.store(flags, Ordering::Relaxed);
    let mut input = Vec::with_capacity(rest.len() + 64);
    if flags & 0x80 != 0 {
        input.extend(startup_packet(flags & 0x40 != 0));
    }
    input.extend_from_slice(rest);
    h.rt.block_on(async {
        let mut s = TcpStream::connect(h.rw).await.expect("the proxy accepts");
        let (mut rd, mut wr) = s.split();
        let write = async {
            // The proxy may refuse and close before it has read everything.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut buf = vec![0u8; 16 * 1024];
            let mut total = 0usize;
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        };
        let both = async { tokio::join!(write, read) };
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("the proxy closes the session after the client's end of stream");
    });
});
