//! The one-line slice notation `DEVICE:BAR:OFFSET:LENGTH[:ro][:wc]` used by
//! `barkeep exec --slice`, `barkeep cdi --slice`, `$BARKEEP_CDI_SLICES` and
//! the C library.

use barkeep_protocol::{parse_number, Access, MemAttrRequest, SliceRequest};

/// The environment variable a CDI spec written by `barkeep cdi` sets in the
/// container: the slices the container is meant to acquire, as
/// space-separated slice specs. `barkeep exec` without `--slice` acquires
/// these.
pub const CDI_SLICES_ENV: &str = "BARKEEP_CDI_SLICES";

/// Parses `DEVICE:BAR:OFFSET:LENGTH` followed by optional flags, each after
/// a `:`: `ro` or `rw` (default `rw`), `uc`, `wc` (write-combining or fail)
/// or `wc=prefer` (write-combining when possible; default `uc`). Numbers
/// take decimal, `0x` hex and K/M/G suffixes.
///
/// ```
/// use barkeep_client::{parse_slice_spec, Access, MemAttrRequest};
/// let r = parse_slice_spec("gpu0:2:0x10000:16K:ro:wc").unwrap();
/// assert_eq!((r.device.as_str(), r.bar, r.offset, r.length), ("gpu0", 2, 0x10000, 0x4000));
/// assert_eq!((r.access, r.memattr), (Access::ReadOnly, MemAttrRequest::WriteCombining));
/// ```
pub fn parse_slice_spec(spec: &str) -> Result<SliceRequest, String> {
    let usage = "write a slice as DEVICE:BAR:OFFSET:LENGTH[:ro][:wc], e.g. sim0:0:0x10000:4K:rw";
    let parts: Vec<&str> = spec.trim().split(':').collect();
    if parts.len() < 4 {
        return Err(format!("{spec:?}: {usage}"));
    }
    let device = parts[0];
    if device.is_empty() {
        return Err(format!("{spec:?}: the device name is empty; {usage}"));
    }
    let num =
        |what: &str, s: &str| parse_number(s).map_err(|e| format!("{spec:?}: {what} {s:?}: {e}"));
    let bar = num("BAR", parts[1])?;
    let bar = u32::try_from(bar)
        .map_err(|_| format!("{spec:?}: BAR index {bar} is too large (BARs are 0..5)"))?;
    let offset = num("offset", parts[2])?;
    let length = num("length", parts[3])?;
    let mut access = None;
    let mut memattr = None;
    for flag in &parts[4..] {
        let (slot_is_access, value) = match *flag {
            "ro" => (true, Some(Access::ReadOnly)),
            "rw" => (true, Some(Access::ReadWrite)),
            _ => (false, None),
        };
        if slot_is_access {
            if access.replace(value.expect("set above")).is_some() {
                return Err(format!("{spec:?}: give ro or rw at most once"));
            }
            continue;
        }
        let m = match *flag {
            "uc" => MemAttrRequest::Uncached,
            "wc" => MemAttrRequest::WriteCombining,
            "wc=prefer" => MemAttrRequest::PreferWriteCombining,
            other => {
                return Err(format!(
                    "{spec:?}: unknown flag {other:?}: flags are ro, rw, uc, wc and wc=prefer"
                ))
            }
        };
        if memattr.replace(m).is_some() {
            return Err(format!(
                "{spec:?}: give one of uc, wc, wc=prefer at most once"
            ));
        }
    }
    Ok(SliceRequest {
        device: device.to_string(),
        bar,
        offset,
        length,
        access: access.unwrap_or(Access::ReadWrite),
        memattr: memattr.unwrap_or(MemAttrRequest::Uncached),
    })
}

/// Writes a request back in the notation [`parse_slice_spec`] reads, with
/// hex offsets and only the flags that differ from the defaults.
pub fn format_slice_spec(req: &SliceRequest) -> String {
    let mut s = format!(
        "{}:{}:{:#x}:{:#x}",
        req.device, req.bar, req.offset, req.length
    );
    if req.access == Access::ReadOnly {
        s.push_str(":ro");
    }
    match req.memattr {
        MemAttrRequest::Uncached => {}
        MemAttrRequest::WriteCombining => s.push_str(":wc"),
        MemAttrRequest::PreferWriteCombining => s.push_str(":wc=prefer"),
    }
    s
}

/// The slices a CDI spec asked for: `$BARKEEP_CDI_SLICES` parsed, or an
/// empty list when it is unset or empty.
pub fn cdi_requested_slices() -> Result<Vec<SliceRequest>, String> {
    let Some(v) = std::env::var_os(CDI_SLICES_ENV) else {
        return Ok(Vec::new());
    };
    let v = v
        .into_string()
        .map_err(|_| format!("${CDI_SLICES_ENV} is not valid UTF-8"))?;
    v.split_whitespace()
        .map(|s| parse_slice_spec(s).map_err(|e| format!("${CDI_SLICES_ENV}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_flags() {
        let r = parse_slice_spec("sim0:0:0x10000:4K").unwrap();
        assert_eq!(r.device, "sim0");
        assert_eq!((r.bar, r.offset, r.length), (0, 0x10000, 4096));
        assert_eq!(r.access, Access::ReadWrite);
        assert_eq!(r.memattr, MemAttrRequest::Uncached);
        let r = parse_slice_spec("nic.1:2:8192:0x2000:wc=prefer:ro").unwrap();
        assert_eq!(r.access, Access::ReadOnly);
        assert_eq!(r.memattr, MemAttrRequest::PreferWriteCombining);
        assert_eq!(
            parse_slice_spec("a:1:0:4K:wc").unwrap().memattr,
            MemAttrRequest::WriteCombining
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("sim0:0:0x1000", "DEVICE:BAR:OFFSET:LENGTH"),
            (":0:0:4K", "device name is empty"),
            ("sim0:x:0:4K", "BAR"),
            ("sim0:0:0:4K:fast", "unknown flag \"fast\""),
            ("sim0:0:0:4K:ro:rw", "at most once"),
            ("sim0:0:0:4K:wc:uc", "at most once"),
            ("sim0:4294967296:0:4K", "too large"),
        ] {
            let e = parse_slice_spec(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn format_round_trips() {
        for spec in [
            "sim0:0:0x10000:0x1000",
            "d:2:0x0:0x4000:ro:wc",
            "x:5:0x1000:0x1000:wc=prefer",
        ] {
            let r = parse_slice_spec(spec).unwrap();
            assert_eq!(format_slice_spec(&r), spec);
            assert_eq!(parse_slice_spec(&format_slice_spec(&r)).unwrap(), r);
        }
    }
}
