//! Pure request validation: is a slice (or a peek/poke) well formed for the
//! device and BAR it names? One error code per failure, checked in a fixed
//! order with checked arithmetic, before policy or any backend sees it.

use barkeep_protocol::{
    BarInfo, DeviceInfo, ErrorCode, ErrorReply, Range, SliceRequest, MAX_BAR, MAX_NAME, MAX_PEEK,
    MAX_POKE,
};

fn fail(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply::new(code, message)
}

/// Checks a device name's length (before any lookup).
pub fn device_name(name: &str) -> Result<(), ErrorReply> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(fail(
            ErrorCode::BadArgument,
            format!(
                "device name of {} bytes is not allowed: names are 1 to {MAX_NAME} bytes (see `barkeep devices`)",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Finds the device and BAR a request names: UnknownDevice,
/// DeviceUnavailable (a device that could not be opened has no BARs to
/// name), BadBar, NoSuchBar.
pub fn device_bar<'a>(
    devices: &'a [DeviceInfo],
    name: &str,
    bar: u32,
) -> Result<(&'a DeviceInfo, &'a BarInfo), ErrorReply> {
    device_name(name)?;
    let Some(dev) = devices.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        return Err(fail(
            ErrorCode::UnknownDevice,
            format!(
                "no device named {name:?} is configured (configured: {}); see `barkeep devices`",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ));
    };
    if let Some(problem) = &dev.problem {
        return Err(fail(
            ErrorCode::DeviceUnavailable,
            format!("device {name:?} is unavailable: {problem} (see `barkeep status`)"),
        ));
    }
    if bar > MAX_BAR {
        return Err(fail(
            ErrorCode::BadBar,
            format!("bar {bar} does not exist on any PCI device: BAR indexes are 0 to {MAX_BAR}"),
        ));
    }
    let Some(info) = dev.bars.iter().find(|b| b.index == bar) else {
        let have: Vec<String> = dev.bars.iter().map(|b| b.index.to_string()).collect();
        return Err(fail(
            ErrorCode::NoSuchBar,
            format!(
                "device {name:?} has no memory bar {bar} (it has: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
        ));
    };
    Ok((dev, info))
}

/// Validates a slice request against the configured devices and the page
/// size, in this order: device name, unknown device, unavailable device,
/// bar index, absent BAR,
/// zero length, alignment, overflow, bounds, mappable areas, reserved ranges.
/// Returns the device and the slice's range.
pub fn slice<'a>(
    req: &SliceRequest,
    devices: &'a [DeviceInfo],
    page_size: u64,
) -> Result<(&'a DeviceInfo, Range), ErrorReply> {
    let (dev, bar) = device_bar(devices, &req.device, req.bar)?;
    let range = req.range();
    if req.length == 0 {
        return Err(fail(
            ErrorCode::ZeroLength,
            format!("slice at offset {:#x} has length 0: ask for at least one page ({page_size:#x} bytes)", req.offset),
        ));
    }
    if req.offset % page_size != 0 {
        return Err(fail(
            ErrorCode::Unaligned,
            format!(
                "offset {:#x} is not page aligned (page size {page_size}): use a multiple of {page_size:#x}, e.g. {:#x}",
                req.offset,
                req.offset - req.offset % page_size
            ),
        ));
    }
    if req.length % page_size != 0 {
        return Err(fail(
            ErrorCode::Unaligned,
            format!(
                "length {:#x} is not page aligned (page size {page_size}): use a multiple of {page_size:#x}, e.g. {:#x}",
                req.length,
                req.length.div_ceil(page_size).saturating_mul(page_size)
            ),
        ));
    }
    let Some(end) = req.offset.checked_add(req.length) else {
        return Err(fail(
            ErrorCode::Overflow,
            format!(
                "offset {:#x} + length {:#x} overflows 64 bits",
                req.offset, req.length
            ),
        ));
    };
    if end > bar.size {
        return Err(fail(
            ErrorCode::OutOfBounds,
            format!(
                "slice {range} ends at {end:#x}, past the end of {:?} bar {} ({:#x} bytes)",
                dev.name, bar.index, bar.size
            ),
        ));
    }
    if !bar.mappable.iter().any(|m| m.contains(&range)) {
        let areas: Vec<String> = bar
            .mappable
            .iter()
            .map(|m| format!("{:#x}..{:#x}", m.offset, m.offset + m.length))
            .collect();
        return Err(fail(
            ErrorCode::NotMappable,
            format!(
                "slice {range} is not inside one mappable area of {:?} bar {} (mappable: {}); pick a slice inside one area",
                dev.name,
                bar.index,
                if areas.is_empty() { "none".to_string() } else { areas.join(", ") }
            ),
        ));
    }
    if let Some(r) = bar.reserved.iter().find(|r| r.range.overlaps(&range)) {
        return Err(fail(
            ErrorCode::Reserved,
            format!(
                "slice {range} overlaps {} ({}) of {:?} bar {}, which is never granted; pick a slice that avoids it",
                r.range, r.what, dev.name, bar.index
            ),
        ));
    }
    Ok((dev, range))
}

/// Validates a peek or poke (admin byte access): known device and BAR,
/// length 1..=limit, inside the BAR with checked arithmetic.
pub fn bytes<'a>(
    devices: &'a [DeviceInfo],
    name: &str,
    bar: u32,
    offset: u64,
    length: u64,
    poke: bool,
) -> Result<&'a DeviceInfo, ErrorReply> {
    let (dev, info) = device_bar(devices, name, bar)?;
    let (what, limit) = if poke {
        ("poke", MAX_POKE as u64)
    } else {
        ("peek", MAX_PEEK)
    };
    if length == 0 {
        return Err(fail(
            ErrorCode::ZeroLength,
            format!("{what} of 0 bytes: give at least one byte"),
        ));
    }
    if length > limit {
        return Err(fail(
            ErrorCode::BadArgument,
            format!("{what} of {length} bytes is too large: at most {limit} bytes at a time"),
        ));
    }
    match offset.checked_add(length) {
        None => Err(fail(
            ErrorCode::Overflow,
            format!("offset {offset:#x} + length {length:#x} overflows 64 bits"),
        )),
        Some(end) if end > info.size => Err(fail(
            ErrorCode::OutOfBounds,
            format!(
                "{what} {offset:#x}+{length:#x} ends past the end of {name:?} bar {bar} ({:#x} bytes)",
                info.size
            ),
        )),
        Some(_) => Ok(dev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barkeep_protocol::{Access, BackendKind, Capabilities, MemAttrRequest, Reserved};

    const PAGE: u64 = 4096;

    fn devices() -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            name: "sim0".into(),
            backend: BackendKind::Sim,
            pci: None,
            ownership: "sim".into(),
            bars: vec![
                BarInfo {
                    index: 0,
                    size: 0x10000,
                    readable: true,
                    writable: true,
                    mmap: true,
                    mappable: vec![Range::new(0, 0x8000), Range::new(0xc000, 0x4000)],
                    reserved: vec![Reserved {
                        range: Range::new(0x2000, 0x100),
                        what: "MSI-X table".into(),
                    }],
                },
                BarInfo {
                    index: 2,
                    size: 0x1000,
                    readable: true,
                    writable: true,
                    mmap: true,
                    mappable: vec![Range::new(0, 0x1000)],
                    reserved: vec![],
                },
            ],
            capabilities: Capabilities::default(),
            problem: None,
        }]
    }

    fn req(device: &str, bar: u32, offset: u64, length: u64) -> SliceRequest {
        SliceRequest {
            device: device.into(),
            bar,
            offset,
            length,
            access: Access::ReadOnly,
            memattr: MemAttrRequest::Uncached,
        }
    }

    fn code(r: SliceRequest) -> ErrorCode {
        slice(&r, &devices(), PAGE).unwrap_err().code
    }

    #[test]
    fn each_failure_has_its_code() {
        assert_eq!(
            code(req(&"x".repeat(65), 0, 0, PAGE)),
            ErrorCode::BadArgument
        );
        assert_eq!(code(req("", 0, 0, PAGE)), ErrorCode::BadArgument);
        assert_eq!(code(req("gpu9", 0, 0, PAGE)), ErrorCode::UnknownDevice);
        assert_eq!(code(req("sim0", 6, 0, PAGE)), ErrorCode::BadBar);
        assert_eq!(code(req("sim0", 1, 0, PAGE)), ErrorCode::NoSuchBar);
        assert_eq!(code(req("sim0", 0, 0x1000, 0)), ErrorCode::ZeroLength);
        assert_eq!(code(req("sim0", 0, 0x1800, PAGE)), ErrorCode::Unaligned);
        assert_eq!(code(req("sim0", 0, 0x1000, 0x800)), ErrorCode::Unaligned);
        assert_eq!(
            code(req("sim0", 0, u64::MAX - 0xfff, 0x2000)),
            ErrorCode::Overflow
        );
        assert_eq!(code(req("sim0", 0, 0xf000, 0x2000)), ErrorCode::OutOfBounds);
        assert_eq!(
            code(req("sim0", 0, 0x10000, 0x1000)),
            ErrorCode::OutOfBounds
        );
        assert_eq!(code(req("sim0", 0, 0x8000, 0x1000)), ErrorCode::NotMappable);
        assert_eq!(code(req("sim0", 0, 0x7000, 0x2000)), ErrorCode::NotMappable);
        assert_eq!(code(req("sim0", 0, 0x2000, 0x1000)), ErrorCode::Reserved);
        assert_eq!(code(req("sim0", 0, 0x1000, 0x2000)), ErrorCode::Reserved);
    }

    #[test]
    fn a_device_that_could_not_be_opened_is_unavailable_with_its_problem() {
        let mut devs = devices();
        devs[0].bars.clear();
        devs[0].problem = Some("cannot open /dev/vfio/42: No such file or directory".into());
        let e = slice(&req("sim0", 0, 0, PAGE), &devs, PAGE).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeviceUnavailable);
        assert!(e.message.contains("/dev/vfio/42"), "{}", e.message);
        let e = bytes(&devs, "sim0", 0, 0, 4, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeviceUnavailable);
    }

    #[test]
    fn edge_pages_are_accepted() {
        let d = devices();
        assert!(slice(&req("sim0", 0, 0x0, 0x2000), &d, PAGE).is_ok());
        assert!(
            slice(&req("sim0", 0, 0x3000, 0x5000), &d, PAGE).is_ok(),
            "up to the mappable end"
        );
        assert!(
            slice(&req("sim0", 0, 0xf000, 0x1000), &d, PAGE).is_ok(),
            "last page of the BAR"
        );
        assert!(
            slice(&req("sim0", 0, 0xc000, 0x4000), &d, PAGE).is_ok(),
            "a whole area"
        );
        let (_, r) = slice(&req("sim0", 2, 0, 0x1000), &d, PAGE).unwrap();
        assert_eq!(r, Range::new(0, 0x1000));
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let e = slice(&req("sim0", 0, 0x1800, PAGE), &devices(), PAGE).unwrap_err();
        assert!(
            e.message
                .contains("offset 0x1800 is not page aligned (page size 4096)"),
            "{}",
            e.message
        );
        let e = slice(&req("sim0", 0, 0xf000, 0x2000), &devices(), PAGE).unwrap_err();
        assert!(e.message.contains("ends at 0x11000"), "{}", e.message);
        let e = slice(&req("sim0", 0, 0x2000, 0x1000), &devices(), PAGE).unwrap_err();
        assert!(e.message.contains("MSI-X table"), "{}", e.message);
    }

    #[test]
    fn order_is_fixed() {
        // Zero length wins over misalignment; misalignment over overflow.
        assert_eq!(code(req("sim0", 0, 0x1800, 0)), ErrorCode::ZeroLength);
        assert_eq!(code(req("sim0", 0, u64::MAX, 0x1000)), ErrorCode::Unaligned);
        // An unknown device is reported even with a bad bar.
        assert_eq!(code(req("nope", 9, 0, 0)), ErrorCode::UnknownDevice);
    }

    #[test]
    fn peek_and_poke_bounds() {
        let d = devices();
        assert!(bytes(&d, "sim0", 0, 0xfffc, 4, false).is_ok());
        assert_eq!(
            bytes(&d, "sim0", 0, 0xfffd, 4, false).unwrap_err().code,
            ErrorCode::OutOfBounds
        );
        assert_eq!(
            bytes(&d, "sim0", 0, u64::MAX, 2, true).unwrap_err().code,
            ErrorCode::Overflow
        );
        assert_eq!(
            bytes(&d, "sim0", 0, 0, 0, true).unwrap_err().code,
            ErrorCode::ZeroLength
        );
        assert_eq!(
            bytes(&d, "sim0", 0, 0, MAX_PEEK + 1, false)
                .unwrap_err()
                .code,
            ErrorCode::BadArgument
        );
        assert_eq!(
            bytes(&d, "sim0", 3, 0, 1, false).unwrap_err().code,
            ErrorCode::NoSuchBar
        );
        assert_eq!(
            bytes(&d, "x", 0, 0, 1, false).unwrap_err().code,
            ErrorCode::UnknownDevice
        );
    }
}
