//! Checked volatile accesses through a mapping (`barkeep_read8` ...
//! `barkeep_write_bytes`): bounds and revocation checked on every call.

use super::*;

/// One volatile 8-bit load at `offset` in the mapping; fails
/// on an access outside the mapping or a revoked lease.
///
/// # Safety
/// `mapping` from `barkeep_map`; `value` points at writable memory.
#[no_mangle]
pub unsafe extern "C" fn barkeep_read8(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: *mut u8,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        let value = nonnull_mut(value, "value")?;
        *value = m.map.read_u8(offset)?;
        Ok(())
    })
}

/// One volatile 8-bit store at `offset` in the mapping; fails
/// on an access outside the mapping, a read-only lease or a revoked one.
///
/// # Safety
/// `mapping` from `barkeep_map`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_write8(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: u8,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        m.map.write_u8(offset, value)?;
        Ok(())
    })
}

/// One volatile 16-bit load at `offset` in the mapping (offset 2-byte aligned); fails
/// on an access outside the mapping or a revoked lease.
///
/// # Safety
/// `mapping` from `barkeep_map`; `value` points at writable memory.
#[no_mangle]
pub unsafe extern "C" fn barkeep_read16(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: *mut u16,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        let value = nonnull_mut(value, "value")?;
        *value = m.map.read_u16(offset)?;
        Ok(())
    })
}

/// One volatile 16-bit store at `offset` in the mapping (offset 2-byte aligned); fails
/// on an access outside the mapping, a read-only lease or a revoked one.
///
/// # Safety
/// `mapping` from `barkeep_map`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_write16(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: u16,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        m.map.write_u16(offset, value)?;
        Ok(())
    })
}

/// One volatile 32-bit load at `offset` in the mapping (offset 4-byte aligned); fails
/// on an access outside the mapping or a revoked lease.
///
/// # Safety
/// `mapping` from `barkeep_map`; `value` points at writable memory.
#[no_mangle]
pub unsafe extern "C" fn barkeep_read32(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: *mut u32,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        let value = nonnull_mut(value, "value")?;
        *value = m.map.read_u32(offset)?;
        Ok(())
    })
}

/// One volatile 32-bit store at `offset` in the mapping (offset 4-byte aligned); fails
/// on an access outside the mapping, a read-only lease or a revoked one.
///
/// # Safety
/// `mapping` from `barkeep_map`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_write32(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: u32,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        m.map.write_u32(offset, value)?;
        Ok(())
    })
}

/// One volatile 64-bit load at `offset` in the mapping (offset 8-byte aligned); fails
/// on an access outside the mapping or a revoked lease.
///
/// # Safety
/// `mapping` from `barkeep_map`; `value` points at writable memory.
#[no_mangle]
pub unsafe extern "C" fn barkeep_read64(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: *mut u64,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        let value = nonnull_mut(value, "value")?;
        *value = m.map.read_u64(offset)?;
        Ok(())
    })
}

/// One volatile 64-bit store at `offset` in the mapping (offset 8-byte aligned); fails
/// on an access outside the mapping, a read-only lease or a revoked one.
///
/// # Safety
/// `mapping` from `barkeep_map`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_write64(
    mapping: *const barkeep_mapping,
    offset: u64,
    value: u64,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        m.map.write_u64(offset, value)?;
        Ok(())
    })
}

/// Copies `length` bytes from `offset` in the mapping into `buf`, with the
/// widest aligned volatile loads.
///
/// # Safety
/// `mapping` from `barkeep_map`; `buf` has room for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn barkeep_read_bytes(
    mapping: *const barkeep_mapping,
    offset: u64,
    buf: *mut u8,
    length: usize,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        if length == 0 {
            return Ok(());
        }
        if buf.is_null() {
            return Err(usage("buf is NULL"));
        }
        // SAFETY: `buf` has room for `length` bytes per the contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf, length) };
        m.map.read_bytes(offset, dst)?;
        Ok(())
    })
}

/// Copies `length` bytes from `data` to `offset` in the mapping, with the
/// widest aligned volatile stores.
///
/// # Safety
/// `mapping` from `barkeep_map`; `data` holds `length` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn barkeep_write_bytes(
    mapping: *const barkeep_mapping,
    offset: u64,
    data: *const u8,
    length: usize,
) -> c_int {
    guard(|| {
        let m = nonnull(mapping, "mapping")?;
        if length == 0 {
            return Ok(());
        }
        if data.is_null() {
            return Err(usage("data is NULL"));
        }
        // SAFETY: `data` holds `length` readable bytes per the contract.
        let src = unsafe { std::slice::from_raw_parts(data, length) };
        m.map.write_bytes(offset, src)?;
        Ok(())
    })
}
