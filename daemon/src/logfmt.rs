//! The stderr log line: one line per event, `TIMESTAMP LEVEL target: message
//! key=value ...`, cheap enough for the audit trail (an event per grant and
//! per release).
//!
//! tracing-subscriber's default formatter cost about a quarter of barkeepd's
//! CPU per round trip on audit events (every field through `Debug` with an
//! escaping writer, style wrappers around every part, and a message repeating
//! the fields). This one writes into a reused per-thread buffer, numbers and
//! plain strings without `core::fmt`, and hands the line to stderr in one
//! write.
//!
//! The line keeps the default formatter's shape, so what operators grep for
//! is unchanged: an RFC 3339 UTC timestamp with microseconds, the level
//! padded to 5, the target, then the message and the fields; string fields
//! quoted and escaped like `Debug` (`action="grant"`), numbers bare
//! (`uid=1000`), `%` fields by `Display` (`range=0x0+0x1000`), bare only
//! when the value is one plain token ([`is_bare`]) and otherwise quoted and
//! escaped like a string, so no value (whatever a client chose for a device
//! or client name) can read as more than one field. Audit events
//! ([`crate::audit::TARGET`]) leave out their message: it repeats the fields,
//! which carry everything (journald still gets it as `MESSAGE`). Control
//! characters in a message or a value are escaped (`\n`, `\u{1b}`), so a
//! line is always one line and cannot drive a terminal.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A layer writing one [line](self) per event to what `make_writer` makes.
pub struct LineLayer<W> {
    make_writer: W,
    ansi: bool,
}

/// Lines to stderr; `ansi` colours the level (for a terminal only).
pub fn stderr(ansi: bool) -> LineLayer<fn() -> std::io::Stderr> {
    LineLayer::new(std::io::stderr, ansi)
}

impl<W> LineLayer<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    /// Lines to `make_writer`'s writers, one `write_all` per event.
    pub fn new(make_writer: W, ansi: bool) -> Self {
        LineLayer { make_writer, ansi }
    }
}

thread_local! {
    /// The line being built, reused so that an event allocates nothing.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The unix second of the cached timestamp prefix, and that prefix
    /// ("2025-01-02T03:04:05"): events come many per second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl<S, W> Layer<S> for LineLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let emit = |line: &mut String| {
            line.clear();
            self.format(event, &ctx, line);
            let meta = event.metadata();
            // A log that cannot be written has nowhere to report that.
            let _ = self
                .make_writer
                .make_writer_for(meta)
                .write_all(line.as_bytes());
        };
        // The buffer is borrowed already only if formatting a value logged
        // (re-entered): that line gets a buffer of its own.
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => emit(&mut line),
            Err(_) => emit(&mut String::new()),
        });
    }
}

impl<W> LineLayer<W> {
    fn format<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>, line: &mut String)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        timestamp(SystemTime::now(), line);
        line.push(' ');
        let level = match *meta.level() {
            Level::TRACE => ("TRACE", "\x1b[35m"),
            Level::DEBUG => ("DEBUG", "\x1b[34m"),
            Level::INFO => (" INFO", "\x1b[32m"),
            Level::WARN => (" WARN", "\x1b[33m"),
            Level::ERROR => ("ERROR", "\x1b[31m"),
        };
        if self.ansi {
            line.push_str(level.1);
            line.push_str(level.0);
            line.push_str("\x1b[0m");
        } else {
            line.push_str(level.0);
        }
        line.push(' ');
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                line.push_str(span.name());
                line.push(':');
            }
            line.push(' ');
        }
        line.push_str(meta.target());
        line.push(':');
        let mut fields = Fields {
            line,
            skip_message: meta.target() == crate::audit::TARGET,
        };
        event.record(&mut fields);
        line.push('\n');
    }
}

/// Appends `key=value` for each field, each after a space.
struct Fields<'a> {
    line: &'a mut String,
    skip_message: bool,
}

impl Fields<'_> {
    /// Appends " key=" (or only " " for the message).
    fn key(&mut self, field: &Field) {
        self.line.push(' ');
        if field.name() != "message" {
            self.line.push_str(field.name());
            self.line.push('=');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let message = field.name() == "message";
        if self.skip_message && message {
            return;
        }
        self.key(field);
        let start = self.line.len();
        let _ = write!(self.line, "{value:?}");
        if message {
            escape_controls(self.line, start);
        } else {
            quote_unless_bare(self.line, start);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            // A message given as a plain string: shown like a formatted one.
            return self.record_debug(field, &format_args!("{value}"));
        }
        self.key(field);
        quoted(value, self.line);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        decimal(value, self.line);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        if value < 0 {
            self.line.push('-');
        }
        decimal(value.unsigned_abs(), self.line);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its causes, outermost first.
        self.key(field);
        let start = self.line.len();
        let _ = write!(self.line, "{value}");
        let mut source = value.source();
        while let Some(e) = source {
            let _ = write!(self.line, ": {e}");
            source = e.source();
        }
        quote_unless_bare(self.line, start);
    }
}

/// Whether `value` may be written without quotes: a non-empty run of the
/// characters of numbers, ids, ranges, slugs and plain names
/// (`[A-Za-z0-9._:+/@#-]`). Anything else (a space, `=`, a quote, a
/// backslash, a control or non-ASCII character) could make one value read
/// as several fields, so it is quoted.
fn is_bare(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+/@#-".contains(&b))
}

/// Leaves `line[start..]` (a `%` or `?` field value, written by `Display`
/// or `Debug`) as it is when it [is bare](is_bare), else quotes and escapes
/// it like a string field: whatever a client put into a value (a device
/// name, a client name) stays inside that one value and cannot forge other
/// fields of the line.
fn quote_unless_bare(line: &mut String, start: usize) {
    if is_bare(&line[start..]) {
        return;
    }
    let tail = line.split_off(start);
    quoted(&tail, line);
}

/// Appends `value` quoted and escaped as `Debug` does (`"a\"b"`); plain
/// printable ASCII, all the audit trail's strings, is copied as it is.
fn quoted(value: &str, line: &mut String) {
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        line.push('"');
        line.push_str(value);
        line.push('"');
    } else {
        let _ = write!(line, "{value:?}");
    }
}

/// Escapes the control characters (C0, DEL, C1) of `line[start..]` as
/// `char::escape_debug` does, so that a value cannot end the line or send
/// escape sequences to a terminal.
fn escape_controls(line: &mut String, start: usize) {
    // 0xc2 starts the UTF-8 of U+0080..U+00BF, the C1 controls among them.
    if !line.as_bytes()[start..]
        .iter()
        .any(|&b| b < b' ' || b == 0x7f || b == 0xc2)
    {
        return;
    }
    let tail = line.split_off(start);
    for c in tail.chars() {
        if c.is_control() {
            line.extend(c.escape_debug());
        } else {
            line.push(c);
        }
    }
}

/// Appends `n` in decimal.
fn decimal(mut n: u64, line: &mut String) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        line.push(d as char);
    }
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn padded(n: u64, width: usize, line: &mut String) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    let mut i = digits.len();
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let from = i.min(digits.len() - width);
    for &d in &digits[from..] {
        line.push(d as char);
    }
}

/// Appends `t` as RFC 3339 in UTC with microseconds
/// (`2025-01-02T03:04:05.123456Z`), as tracing-subscriber's default did.
fn timestamp(t: SystemTime, line: &mut String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            date_time(secs, &mut cached.1);
            cached.0 = secs;
        }
        line.push_str(&cached.1);
    });
    line.push('.');
    padded(u64::from(since.subsec_micros()), 6, line);
    line.push('Z');
}

/// Appends the UTC date and time of unix second `secs`
/// ("2025-01-02T03:04:05").
fn date_time(secs: u64, out: &mut String) {
    // Days to the civil date: H. Hinnant's days_from_civil, inverted
    // (https://howardhinnant.github.io/date_algorithms.html).
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    padded(year, 4, out);
    out.push('-');
    padded(month, 2, out);
    out.push('-');
    padded(day, 2, out);
    out.push('T');
    padded(rem / 3600, 2, out);
    out.push(':');
    padded(rem / 60 % 60, 2, out);
    out.push(':');
    padded(rem % 60, 2, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::registry().with(LineLayer::new(sink.clone(), false));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// The line after its timestamp, checked to be one.
    fn after_timestamp(line: &str) -> &str {
        let (ts, rest) = line.split_once(' ').unwrap();
        assert_eq!(ts.len(), "2025-01-02T03:04:05.123456Z".len(), "{line}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line}");
        rest
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut s = String::new();
        timestamp(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        s.clear();
        // 2024-02-29T23:59:59.000042Z: a leap day, the end of a day.
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 42_000);
        timestamp(t, &mut s);
        assert_eq!(s, "2024-02-29T23:59:59.000042Z");
        s.clear();
        timestamp(UNIX_EPOCH + Duration::from_secs(1_709_251_200), &mut s);
        assert_eq!(s, "2024-03-01T00:00:00.000000Z");
        s.clear();
        timestamp(
            UNIX_EPOCH + Duration::new(4_102_444_800, 999_999_999),
            &mut s,
        );
        assert_eq!(s, "2100-01-01T00:00:00.999999Z");
    }

    #[test]
    fn audit_events_are_one_line_of_their_fields_without_the_message() {
        let who = barkeep_protocol::PeerIdentity {
            uid: 4001,
            gid: 4002,
            pid: 77,
            groups: vec![],
            cgroup: Some("/a \"b\"".into()),
            label: None,
        };
        let lease = barkeep_protocol::Lease {
            id: barkeep_protocol::LeaseId([0xab; 16]),
            device: "gpu0".into(),
            bar: 2,
            offset: 0x1000,
            length: 0x2000,
            access: barkeep_protocol::Access::ReadWrite,
            memattr: barkeep_protocol::MemAttr::WriteCombining,
            buffer_name: "barkeep".into(),
        };
        let req = barkeep_protocol::SliceRequest {
            device: "gpu0".into(),
            bar: 2,
            offset: 0x1000,
            length: 0x800,
            access: barkeep_protocol::Access::ReadOnly,
            memattr: barkeep_protocol::MemAttrRequest::PreferWriteCombining,
        };
        let error = barkeep_protocol::ErrorReply {
            code: barkeep_protocol::ErrorCode::QuotaExceeded,
            message: "over quota\nfake line".into(),
        };
        let log = logged(|| {
            crate::audit::grant(9, &who, &lease, "team-a");
            crate::audit::deny(9, &who, &req, &error, "team-a");
            crate::audit::end(
                9,
                &who,
                &lease,
                barkeep_protocol::RevokeReason::Unclaimed,
                "dead",
            );
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log}");
        assert_eq!(
            after_timestamp(lines[0]),
            format!(
                " INFO barkeep::audit: action=\"grant\" uid=4001 gid=4002 pid=77 \
                 cgroup=\"/a \\\"b\\\"\" label=\"-\" session=9 device=gpu0 bar=2 \
                 offset=4096 length=8192 range=0x1000+0x2000 access=rw memattr=wc \
                 lease={} outcome=\"granted\" reason=\"-\" rule=\"team-a\"",
                "ab".repeat(16)
            )
        );
        let deny = after_timestamp(lines[1]);
        assert!(
            deny.contains(
                " range=0x1000+0x800 access=ro memattr=PreferWriteCombining lease=\"-\" \
                 outcome=\"quota\" reason=\"over quota\\nfake line\" rule=\"team-a\""
            ),
            "{deny}"
        );
        let end = after_timestamp(lines[2]);
        assert!(end.starts_with(" INFO barkeep::audit: action=\"revoke\" uid=4001 "));
        assert!(end.contains(" outcome=\"dead\" reason=\"unclaimed\" rule=\"-\""));
    }

    /// The `key=value` fields of a line's tail: values bare up to a space,
    /// or quoted with backslash escapes (the escapes kept).
    fn parse_fields(mut rest: &str) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while let Some(r) = rest.strip_prefix(' ') {
            let (key, r) = r.split_once('=').unwrap();
            let (value, r) = if let Some(q) = r.strip_prefix('"') {
                let mut end = 0;
                let bytes = q.as_bytes();
                while bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                (&q[..end], &q[end + 1..])
            } else {
                r.split_once(' ')
                    .map_or((r, ""), |(v, _)| (v, &r[v.len()..]))
            };
            fields.push((key.to_string(), value.to_string()));
            rest = r;
        }
        assert!(rest.is_empty(), "unparsed: {rest:?}");
        fields
    }

    #[test]
    fn a_client_chosen_name_cannot_forge_fields_or_flood_the_line() {
        let who = barkeep_protocol::PeerIdentity {
            uid: 1001,
            gid: 1001,
            pid: 5,
            groups: vec![],
            cgroup: Some("/x\" action=\"grant".into()),
            label: None,
        };
        let forged = "x outcome=\"granted\" action=\"grant\" uid=0 lease=ab";
        let long = "é".repeat(40_000);
        let log = logged(|| {
            for device in [forged, long.as_str(), "a=b", "tab\there"] {
                let req = barkeep_protocol::SliceRequest {
                    device: device.into(),
                    bar: 0,
                    offset: 0,
                    length: 0x1000,
                    access: barkeep_protocol::Access::ReadWrite,
                    memattr: barkeep_protocol::MemAttrRequest::Uncached,
                };
                let error = crate::decide::validate::device_name(device)
                    .err()
                    .unwrap_or_else(|| {
                        barkeep_protocol::ErrorReply::new(
                            barkeep_protocol::ErrorCode::UnknownDevice,
                            format!("no device named {device:?}"),
                        )
                    });
                crate::audit::deny(3, &who, &req, &error, "-");
            }
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 4, "{log}");
        for line in &lines {
            // Read as a log parser would: exactly the audit fields, with
            // the values the daemon wrote.
            let fields = parse_fields(line.split_once("barkeep::audit:").unwrap().1);
            let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "action", "uid", "gid", "pid", "cgroup", "label", "session", "device", "bar",
                    "offset", "length", "range", "access", "memattr", "lease", "outcome", "reason",
                    "rule"
                ],
                "{line}"
            );
            assert_eq!(fields[0].1, "deny");
            assert_eq!(fields[1].1, "1001");
            assert_eq!(fields[14].1, "-");
            assert!(line.contains(" action=\"deny\" uid=1001 "), "{line}");
            assert!(
                line.contains(" cgroup=\"/x\\\" action=\\\"grant\" "),
                "{line}"
            );
        }
        assert!(
            lines[0].contains(
                " device=\"x outcome=\\\"granted\\\" action=\\\"grant\\\" uid=0 lease=ab\" bar=0 "
            ),
            "{}",
            lines[0]
        );
        // 80,000 bytes of name: logged as its first 64 bytes, the reason
        // giving its length.
        assert!(lines[1].len() < 1000, "{} bytes", lines[1].len());
        let cut = format!(" device=\"{}...\" ", "é".repeat(32));
        assert!(lines[1].contains(&cut), "{}", lines[1]);
        assert!(
            lines[1].contains("device name of 80000 bytes is not allowed"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(" device=\"a=b\" "), "{}", lines[2]);
        assert!(lines[3].contains(" device=\"tab\\there\" "), "{}", lines[3]);
    }

    #[test]
    fn other_events_keep_their_message_and_cannot_break_the_line() {
        let log = logged(|| {
            tracing::warn!(n = -3, ok = true, path = %"a\nb", "cannot {}", "x\x1by");
            tracing::info!("plain");
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        let target = module_path!();
        assert_eq!(
            after_timestamp(lines[0]),
            format!(" WARN {target}: cannot x\\u{{1b}}y n=-3 ok=true path=\"a\\nb\"")
        );
        assert_eq!(after_timestamp(lines[1]), format!(" INFO {target}: plain"));
    }

    #[test]
    fn numbers_and_strings_are_written_as_debug_would() {
        for n in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut s = String::new();
            decimal(n, &mut s);
            assert_eq!(s, n.to_string());
        }
        for v in ["", "plain", "a\"b", "back\\slash", "tab\t", "é", "\u{85}"] {
            let mut s = String::new();
            quoted(v, &mut s);
            assert_eq!(s, format!("{v:?}"));
        }
    }
}
