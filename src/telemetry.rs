//! Logging: tracing to stderr, human-readable text on a terminal or JSON lines.
//! `RUST_LOG` filters (default `info`). Request bodies are never logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A W3C Trace Context `traceparent` header (`00-<trace-id>-<parent-id>-<flags>`), read
/// without copying: the request's span records its trace and parent ids, so kiln's logs
/// join the caller's trace. Parsed only when a request carries the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: &'a str,
    /// The caller's span: 16 lowercase hex digits, not all zero.
    pub parent_id: &'a str,
    /// Bit 0: the caller sampled this trace.
    pub sampled: bool,
}

/// The request header that carries a [`TraceParent`].
pub const TRACEPARENT: &str = "traceparent";

impl<'a> TraceParent<'a> {
    /// Parses a header value as the W3C recommendation says a receiver must: version `00`
    /// exactly as specified; a later version by its version-00 prefix (more fields may
    /// follow after a `-`); version `ff`, upper-case hex and all-zero ids are invalid.
    /// `None`: ignore the header (a new trace starts here).
    pub fn parse(value: &'a [u8]) -> Option<TraceParent<'a>> {
        let s = std::str::from_utf8(value).ok()?;
        let hex = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let (version, rest) = (s.get(..2)?, s.get(2..)?);
        if !hex(version, 2) || version == "ff" {
            return None;
        }
        if version == "00" && s.len() != 55 {
            return None;
        }
        if s.len() < 55 || (s.len() > 55 && s.as_bytes()[55] != b'-') {
            return None;
        }
        let b = rest.as_bytes();
        if b[0] != b'-' || b[33] != b'-' || b[50] != b'-' {
            return None;
        }
        let (trace_id, parent_id, flags) = (&rest[1..33], &rest[34..50], &rest[51..53]);
        let nonzero = |id: &str| id.bytes().any(|c| c != b'0');
        let valid = hex(trace_id, 32)
            && hex(parent_id, 16)
            && hex(flags, 2)
            && nonzero(trace_id)
            && nonzero(parent_id);
        if !valid {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    #[test]
    fn traceparent_follows_the_w3c_rules() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceParent::parse(ok),
            Some(TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                parent_id: "00f067aa0ba902b7",
                sampled: true,
            })
        );
        // A later version may append fields; version 00 may not.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert_eq!(TraceParent::parse(later).map(|t| t.sampled), Some(false));
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01".as_bytes(),
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
