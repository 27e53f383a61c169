//! Just enough of the Postgres wire protocol and of HTTP, over blocking std sockets, to open
//! trusted sessions, park startup packets and read the proxy's admin endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Protocol 3.0.
const PROTOCOL_3_0: u32 = 0x0003_0000;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&local(port), Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nothing listens on 127.0.0.1:{port} after {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over HTTP/1.0: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&local(port), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:.80}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// A StartupMessage (protocol 3.0) for `user` and `database`.
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A simple Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// A session opened with a trusted role (no password exchange), idle at ReadyForQuery.
pub struct Session {
    stream: TcpStream,
}

impl Session {
    /// Connects to `port`, sends the startup packet and waits for ReadyForQuery.
    pub fn open(port: u16, user: &str, database: &str) -> Result<Session, String> {
        let stream = TcpStream::connect_timeout(&local(port), Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut s = Session { stream };
        s.stream
            .write_all(&startup_packet(user, database))
            .map_err(|e| format!("startup: {e}"))?;
        s.until_ready()?;
        Ok(s)
    }

    /// Runs `sql` with the simple protocol and waits for ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> Result<(), String> {
        self.stream
            .write_all(&query_message(sql))
            .map_err(|e| format!("query: {e}"))?;
        self.until_ready()
    }

    /// Reads messages until ReadyForQuery; an ErrorResponse is an error (also when the server
    /// closes right after it, as it does for a FATAL).
    fn until_ready(&mut self) -> Result<(), String> {
        let mut error: Option<String> = None;
        let failed = |error: &Option<String>, e: std::io::Error| match error {
            Some(msg) => msg.clone(),
            None => format!("read: {e}"),
        };
        loop {
            let mut header = [0u8; 5];
            self.stream
                .read_exact(&mut header)
                .map_err(|e| failed(&error, e))?;
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if !(4..=1 << 20).contains(&len) {
                return Err(format!("bad message length {len}"));
            }
            let mut body = vec![0u8; len - 4];
            self.stream
                .read_exact(&mut body)
                .map_err(|e| failed(&error, e))?;
            match header[0] {
                b'E' => error = Some(String::from_utf8_lossy(&body).replace('\0', " ")),
                b'Z' => return error.map_or(Ok(()), Err),
                b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                    return Err("the server asked for a password".into());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_startup_packet_is_length_version_and_pairs() {
        let p = startup_packet("u", "d");
        assert_eq!(&p[..4], &(p.len() as u32).to_be_bytes());
        assert_eq!(&p[4..8], &[0, 3, 0, 0]);
        assert_eq!(&p[8..], b"user\0u\0database\0d\0\0");
    }

    #[test]
    fn metrics_are_read_by_exact_name() {
        let text = "# TYPE pgsteer_held_connections gauge\npgsteer_held_connections 42\n\
                    pgsteer_held_connections_total 7\n";
        assert_eq!(metric(text, "pgsteer_held_connections"), Some(42.0));
        assert_eq!(metric(text, "pgsteer_held"), None);
    }
}
