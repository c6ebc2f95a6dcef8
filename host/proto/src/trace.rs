//! W3C trace context: what a traced request carries from node to node, so the spans
//! every node exports for one call join one trace.
//!
//! On the wire it is the 25 bytes of a `traceparent` header's fields (trace id, parent
//! span id, flags) in a [`Frame::Request`](crate::Frame::Request) sent with the traced
//! request tag; a request without one is encoded exactly as before.

/// A span's identity as its children see it: the trace, the span, and the flags
/// (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceContext {
    /// Bytes on the wire.
    pub const LEN: usize = 25;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..16].copy_from_slice(&self.trace_id);
        out[16..24].copy_from_slice(&self.span_id);
        out[24] = self.flags;
        out
    }

    /// From [`TraceContext::to_bytes`]'s layout; `None` for an all-zero trace or span
    /// id, which W3C defines as invalid.
    pub fn from_bytes(b: &[u8; Self::LEN]) -> Option<TraceContext> {
        let t = TraceContext { trace_id: b[..16].try_into().ok()?, span_id: b[16..24].try_into().ok()?, flags: b[24] };
        t.is_valid().then_some(t)
    }

    fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// Parses a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); `None` for
    /// anything else, as the W3C spec says a receiver treats a malformed one.
    pub fn from_traceparent(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; a later version may add more after them.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut t = TraceContext { trace_id: [0; 16], span_id: [0; 8], flags: 0 };
        hex_into(trace, &mut t.trace_id)?;
        hex_into(span, &mut t.span_id)?;
        let mut f = [0u8; 1];
        hex_into(flags, &mut f)?;
        t.flags = f[0];
        t.is_valid().then_some(t)
    }

    /// The `traceparent` header for this context.
    pub fn to_traceparent(&self) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }
}

/// Lower-case hex only (W3C: upper case is invalid), exactly `out.len()` bytes' worth.
fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_roundtrips_through_the_header_and_the_wire() {
        let t = TraceContext::from_traceparent(EXAMPLE).unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.span_id[7], 0xb7);
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_traceparent(), EXAMPLE);
        assert_eq!(TraceContext::from_bytes(&t.to_bytes()), Some(t));
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad:?}");
        }
        // A later version may carry more fields after the four it shares with 00.
        assert!(TraceContext::from_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
        assert_eq!(TraceContext::from_bytes(&[0; TraceContext::LEN]), None);
    }
}
