//! Slices inherited from `barkeep exec` (`barkeep_inherited*`).

use super::*;

/// The slices `barkeep exec` handed this process, once taken.
static INHERITED: Mutex<Option<Vec<InheritedSlice>>> = Mutex::new(None);

fn with_inherited<T>(
    f: impl FnOnce(&[InheritedSlice]) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let mut guard = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(inherited_slices()?);
    }
    f(guard.as_deref().expect("set above"))
}

fn inherited_at(slices: &[InheritedSlice], index: usize) -> Result<&InheritedSlice, Failure> {
    slices.get(index).ok_or_else(|| {
        usage(format!(
            "no inherited slice {index}: this process has {} (run it through `barkeep exec --slice ...`)",
            slices.len()
        ))
    })
}

/// Takes over the slices a `barkeep exec` parent handed this process
/// (`$BARKEEP_SLICES`; none when it is unset) and describes up to
/// `capacity` of them in `out`; `*count` is how many there are. The first
/// call takes them, later calls describe the same ones. Their fds stay
/// open for the life of the process; they cannot be released (their
/// leases end when the parent's command, this process, exits).
///
/// # Safety
/// `out` has room for `capacity` leases (may be NULL when `capacity` is
/// 0); `count` points at a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_inherited(
    out: *mut barkeep_lease,
    capacity: usize,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let count = nonnull_mut(count, "count")?;
        if out.is_null() && capacity > 0 {
            return Err(usage("out is NULL"));
        }
        with_inherited(|slices| {
            *count = slices.len();
            for (i, slice) in slices.iter().take(capacity).enumerate() {
                // SAFETY: `out` has room for `capacity` leases and i < capacity.
                let dst = unsafe { &mut *out.add(i) };
                fill_lease_from(dst, slice.lease(), slice.as_raw_fd());
            }
            Ok(())
        })
    })
}

/// Maps inherited slice `index` (as `barkeep_map` does for an acquired
/// one). Accesses through the mapping fail with `BARKEEP_ERR_REVOKED` once
/// the parent reports the lease revoked.
///
/// # Safety
/// `out` points at a `barkeep_mapping *`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_inherited_map(
    index: usize,
    offset: u64,
    length: u64,
    out: *mut *mut barkeep_mapping,
) -> c_int {
    guard(|| {
        let out = nonnull_mut(out, "out")?;
        *out = std::ptr::null_mut();
        let map =
            with_inherited(|slices| Ok(inherited_at(slices, index)?.map_range(offset, length)?))?;
        *out = Box::into_raw(Box::new(barkeep_mapping { map }));
        Ok(())
    })
}

/// 1 if the `barkeep exec` parent reported inherited slice `index`
/// revoked, 0 if not, -1 if there is no such slice (see the last error).
#[no_mangle]
pub extern "C" fn barkeep_inherited_is_revoked(index: usize) -> c_int {
    let mut revoked = false;
    let rc = guard(|| {
        with_inherited(|slices| {
            revoked = inherited_at(slices, index)?.is_revoked();
            Ok(())
        })
    });
    match rc {
        0 => c_int::from(revoked),
        _ => -1,
    }
}
