//! libbarkeep: the C interface to the barkeep client library (connect,
//! status, acquire, release, map and checked accesses, errors).
//!
//! Conventions, for every function:
//!
//! * functions returning `int` return 0 on success, else a stable error
//!   code (`BARKEEP_ERR_*`: the daemon's codes below 100, the client's from
//!   100 up); `barkeep_last_error_message()` then says what went wrong and
//!   what to do, for the calling thread;
//! * a Rust panic never crosses into C: it becomes `BARKEEP_ERR_UNEXPECTED`;
//! * a `barkeep_client` may be used from several threads at once, except
//!   that `barkeep_disconnect` must be the last call on it;
//! * fds in a `barkeep_lease` belong to the client: valid until
//!   `barkeep_release` (or `barkeep_disconnect`); `dup()` one to keep it.
//!
//! The header `include/barkeep.h` is generated from this file by cbindgen
//! (`BARKEEP_BLESS=1 cargo test -p barkeep-capi --test header`).

#![allow(non_camel_case_types)]

use ::barkeep_client::{
    inherited_slices, parse_slice_spec, Access, Client, Error, InheritedSlice, Lease, LeaseId,
    Mapping, MemAttr, MemAttrRequest, Slice, SliceRequest,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

/// Read-only slice (`barkeep_slice_request.access`, `barkeep_lease.access`).
pub const BARKEEP_ACCESS_RO: u32 = 0;
/// Read-write slice.
pub const BARKEEP_ACCESS_RW: u32 = 1;

/// Uncached mappings (request and lease).
pub const BARKEEP_MEMATTR_UC: u32 = 0;
/// Write-combining mappings; a request fails if it cannot be had.
pub const BARKEEP_MEMATTR_WC: u32 = 1;
/// Request only: write-combining when possible, else uncached (the lease
/// says which).
pub const BARKEEP_MEMATTR_PREFER_WC: u32 = 2;

/// Capability bits of `barkeep_status.capabilities`: buffers can be exported.
pub const BARKEEP_CAP_EXPORT: u32 = 1;
/// Buffers can be mmapped.
pub const BARKEEP_CAP_MMAP: u32 = 2;
/// A single buffer can be revoked.
pub const BARKEEP_CAP_REVOKE: u32 = 4;
/// Write-combining mappings are possible.
pub const BARKEEP_CAP_WRITE_COMBINING: u32 = 8;
/// Every buffer of a device can be revoked at once.
pub const BARKEEP_CAP_DEVICE_REVOKE: u32 = 16;

/// Size of `barkeep_lease.id`: 32 hex digits and a NUL.
pub const BARKEEP_LEASE_ID_SIZE: usize = 33;
/// Size of the name fields (device, buffer name, version), NUL included;
/// longer names are cut.
pub const BARKEEP_NAME_SIZE: usize = 72;

/// `barkeep_event.kind`: no event arrived before the timeout.
pub const BARKEEP_EVENT_NONE: u32 = 0;
/// `barkeep_event.kind`: a lease ended (see `reason`).
pub const BARKEEP_EVENT_REVOKED: u32 = 1;

/// Daemon error codes (see protocol/PROTOCOL.md); their slugs come from
/// `barkeep_error_slug()`.
pub const BARKEEP_ERR_MALFORMED: c_int = 1;
/// The request was too large.
pub const BARKEEP_ERR_OVERSIZED: c_int = 2;
/// The daemon speaks another protocol version.
pub const BARKEEP_ERR_UNSUPPORTED_VERSION: c_int = 3;
/// A request before the handshake.
pub const BARKEEP_ERR_HANDSHAKE: c_int = 4;
/// The daemon does not know this request.
pub const BARKEEP_ERR_UNKNOWN_REQUEST: c_int = 5;
/// A bad argument.
pub const BARKEEP_ERR_BAD_ARGUMENT: c_int = 6;
/// No such device.
pub const BARKEEP_ERR_UNKNOWN_DEVICE: c_int = 10;
/// BAR index out of 0..5.
pub const BARKEEP_ERR_BAD_BAR: c_int = 11;
/// The device has no such BAR.
pub const BARKEEP_ERR_NO_SUCH_BAR: c_int = 12;
/// A zero-length slice.
pub const BARKEEP_ERR_ZERO_LENGTH: c_int = 13;
/// Offset or length not page aligned.
pub const BARKEEP_ERR_UNALIGNED: c_int = 14;
/// Offset + length overflows.
pub const BARKEEP_ERR_OVERFLOW: c_int = 15;
/// The slice goes past the BAR.
pub const BARKEEP_ERR_OUT_OF_BOUNDS: c_int = 16;
/// The slice is not in a mappable area.
pub const BARKEEP_ERR_NOT_MAPPABLE: c_int = 17;
/// The slice overlaps a reserved range.
pub const BARKEEP_ERR_RESERVED: c_int = 18;
/// No grant for this caller, device and BAR.
pub const BARKEEP_ERR_DENIED: c_int = 20;
/// The slice is outside the granted windows.
pub const BARKEEP_ERR_OUTSIDE_WINDOW: c_int = 21;
/// Read-write asked, read-only granted.
pub const BARKEEP_ERR_ACCESS_DENIED: c_int = 22;
/// Write-combining not granted.
pub const BARKEEP_ERR_WC_DENIED: c_int = 23;
/// Administrators only.
pub const BARKEEP_ERR_ADMIN_ONLY: c_int = 24;
/// Conflicts with another lease.
pub const BARKEEP_ERR_CONFLICT: c_int = 25;
/// A quota is exhausted.
pub const BARKEEP_ERR_QUOTA: c_int = 26;
/// A daemon limit is reached.
pub const BARKEEP_ERR_LIMIT: c_int = 27;
/// The daemon could not establish who the caller is.
pub const BARKEEP_ERR_IDENTITY: c_int = 28;
/// The configuration is invalid.
pub const BARKEEP_ERR_CONFIG: c_int = 29;
/// No such lease.
pub const BARKEEP_ERR_UNKNOWN_LEASE: c_int = 30;
/// Not supported by this kernel or device.
pub const BARKEEP_ERR_UNSUPPORTED: c_int = 40;
/// The device cannot be used now.
pub const BARKEEP_ERR_DEVICE_UNAVAILABLE: c_int = 41;
/// The kernel refused.
pub const BARKEEP_ERR_KERNEL: c_int = 42;
/// The range may still be mapped through an earlier buffer this kernel
/// cannot revoke; try again once it is gone.
pub const BARKEEP_ERR_RANGE_BUSY: c_int = 43;
/// An internal error in the daemon.
pub const BARKEEP_ERR_INTERNAL: c_int = 50;
/// Client codes: a system call failed.
pub const BARKEEP_ERR_IO: c_int = 100;
/// The daemon violated the protocol.
pub const BARKEEP_ERR_PROTOCOL: c_int = 101;
/// The connection is gone or could not be made.
pub const BARKEEP_ERR_DISCONNECTED: c_int = 102;
/// The lease was revoked.
pub const BARKEEP_ERR_REVOKED: c_int = 103;
/// A write through a read-only mapping.
pub const BARKEEP_ERR_READ_ONLY: c_int = 104;
/// An access outside the slice or mapping.
pub const BARKEEP_ERR_OUT_OF_RANGE: c_int = 105;
/// A misaligned access or mapping offset.
pub const BARKEEP_ERR_UNALIGNED_ACCESS: c_int = 106;
/// This kernel cannot mmap these buffers.
pub const BARKEEP_ERR_MMAP_UNSUPPORTED: c_int = 107;
/// A bad argument to a libbarkeep function (e.g. a NULL pointer).
pub const BARKEEP_ERR_USAGE: c_int = 108;
/// Something unexpected (an internal error).
pub const BARKEEP_ERR_UNEXPECTED: c_int = 109;
/// `$BARKEEP_SLICES` is malformed or stale.
pub const BARKEEP_ERR_ENVIRONMENT: c_int = 110;

/// A connection to barkeepd (opaque).
pub struct barkeep_client {
    client: Client,
    /// Granted slices by lease id: they own the fds handed to C.
    slices: Mutex<HashMap<LeaseId, Slice>>,
}

/// A CPU mapping of (part of) a slice (opaque).
pub struct barkeep_mapping {
    map: Mapping,
}

/// What to acquire.
#[repr(C)]
pub struct barkeep_slice_request {
    /// Device name (NUL-terminated).
    pub device: *const c_char,
    /// BAR index, 0..5.
    pub bar: u32,
    /// `BARKEEP_ACCESS_RO` or `BARKEEP_ACCESS_RW`.
    pub access: u32,
    /// `BARKEEP_MEMATTR_UC`, `_WC` or `_PREFER_WC`.
    pub memattr: u32,
    /// Offset of the slice in the BAR (page aligned).
    pub offset: u64,
    /// Length of the slice (page aligned).
    pub length: u64,
}

/// A granted slice.
#[repr(C)]
pub struct barkeep_lease {
    /// Lease id: 32 hex digits.
    pub id: [c_char; BARKEEP_LEASE_ID_SIZE],
    /// Device name.
    pub device: [c_char; BARKEEP_NAME_SIZE],
    /// The buffer's name (as /proc/PID/maps shows it).
    pub buffer_name: [c_char; BARKEEP_NAME_SIZE],
    /// BAR index.
    pub bar: u32,
    /// `BARKEEP_ACCESS_RO` or `BARKEEP_ACCESS_RW`.
    pub access: u32,
    /// `BARKEEP_MEMATTR_UC` or `BARKEEP_MEMATTR_WC`: what mappings get.
    pub memattr: u32,
    /// The buffer fd (a DMABUF; a memfd for simulated devices): byte 0 is
    /// BAR byte `offset`. Owned by the client until `barkeep_release`.
    pub fd: c_int,
    /// Offset of the slice in the BAR.
    pub offset: u64,
    /// Length of the slice.
    pub length: u64,
}

/// The daemon's status, summarized.
#[repr(C)]
pub struct barkeep_status {
    /// The daemon's version.
    pub daemon_version: [c_char; BARKEEP_NAME_SIZE],
    /// Protocol version spoken.
    pub protocol_version: u32,
    /// Open sessions.
    pub sessions: u32,
    /// Live leases (all sessions).
    pub leases: u32,
    /// Configured devices.
    pub devices: u32,
    /// `BARKEEP_CAP_*` bits the running kernel supports.
    pub capabilities: u32,
    /// Whether this connection is an administrator's (1) or not (0).
    pub admin: u32,
    /// Page size: slice offsets and lengths are multiples of it.
    pub page_size: u64,
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// This connection's session id.
    pub session_id: u64,
}

/// An event from the daemon.
#[repr(C)]
pub struct barkeep_event {
    /// `BARKEEP_EVENT_NONE` (timeout) or `BARKEEP_EVENT_REVOKED`.
    pub kind: u32,
    /// Why the lease ended: the status page codes of `barkeep exec`
    /// (1 released, 2 disconnected, 3 admin, 4 policy, 5 device, 6 shutdown,
    /// 7 unclaimed after a daemon restart).
    pub reason: u32,
    /// The lease that ended.
    pub lease_id: [c_char; BARKEEP_LEASE_ID_SIZE],
}

struct LastError {
    code: c_int,
    message: CString,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<LastError>> = const { RefCell::new(None) };
}

/// A failed call: its code and message.
struct Failure {
    code: c_int,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            code: c_int::from(e.code()),
            message: e.to_string(),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: BARKEEP_ERR_USAGE,
        message: message.into(),
    }
}

fn record(f: Failure) -> c_int {
    let message = CString::new(f.message.replace('\0', " ")).expect("no NUL left");
    LAST_ERROR.with(|e| {
        *e.borrow_mut() = Some(LastError {
            code: f.code,
            message,
        })
    });
    f.code
}

fn panic_failure(p: Box<dyn std::any::Any + Send>) -> Failure {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Failure {
        code: BARKEEP_ERR_UNEXPECTED,
        message: format!("internal error in libbarkeep ({what}); please report it"),
    }
}

/// Runs an entry point: no panic escapes; failures are recorded for
/// `barkeep_last_error_*` and returned as their code.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(failure)) => record(failure),
        Err(p) => record(panic_failure(p)),
    }
}

/// `guard` for entry points returning a pointer (NULL on failure).
fn guard_ptr<T>(f: impl FnOnce() -> Result<*mut T, Failure>) -> *mut T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(p)) => p,
        Ok(Err(failure)) => {
            record(failure);
            std::ptr::null_mut()
        }
        Err(p) => {
            record(panic_failure(p));
            std::ptr::null_mut()
        }
    }
}

/// A C string argument, or None for NULL.
///
/// # Safety
/// `p` is NULL or points at a NUL-terminated string.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| usage(format!("{what} is not valid UTF-8")))
}

fn nonnull<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: a non-NULL pointer from C is, per every function's contract,
    // valid and properly aligned for the duration of the call.
    unsafe { p.as_ref() }.ok_or_else(|| usage(format!("{what} is NULL")))
}

fn nonnull_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as in `nonnull`; the caller gives exclusive access to `*p`.
    unsafe { p.as_mut() }.ok_or_else(|| usage(format!("{what} is NULL")))
}

/// Copies `s` into a fixed C buffer, cut at a character boundary, NUL
/// terminated.
fn copy_str(dst: &mut [c_char], s: &str) {
    let max = dst.len() - 1;
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..end].iter()) {
        *d = *b as c_char;
    }
    dst[end] = 0;
}

fn lease_id(lease: &barkeep_lease) -> Result<LeaseId, Failure> {
    // SAFETY: `id` is a fixed array inside the struct; reading it as bytes
    // is always valid.
    let bytes: &[u8] = unsafe {
        std::slice::from_raw_parts(lease.id.as_ptr().cast::<u8>(), BARKEEP_LEASE_ID_SIZE)
    };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end])
        .map_err(|_| usage("lease id is not text"))?
        .parse::<LeaseId>()
        .map_err(usage)
}

fn fill_lease(out: &mut barkeep_lease, slice: &Slice) {
    fill_lease_from(out, slice.lease(), slice.as_raw_fd());
}

fn fill_lease_from(out: &mut barkeep_lease, l: &Lease, fd: c_int) {
    copy_str(&mut out.id, &l.id.to_string());
    copy_str(&mut out.device, &l.device);
    copy_str(&mut out.buffer_name, &l.buffer_name);
    out.bar = l.bar;
    out.access = match l.access {
        Access::ReadOnly => BARKEEP_ACCESS_RO,
        Access::ReadWrite => BARKEEP_ACCESS_RW,
    };
    out.memattr = match l.memattr {
        MemAttr::Uncached => BARKEEP_MEMATTR_UC,
        MemAttr::WriteCombining => BARKEEP_MEMATTR_WC,
    };
    out.fd = fd;
    out.offset = l.offset;
    out.length = l.length;
}

fn lock(m: &Mutex<HashMap<LeaseId, Slice>>) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Slice>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The library's version, e.g. "0.1.0" (a static string).
#[no_mangle]
pub extern "C" fn barkeep_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The code of the calling thread's last failure (0 if none yet).
#[no_mangle]
pub extern "C" fn barkeep_last_error_code() -> c_int {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(0, |e| e.code))
}

/// The message of the calling thread's last failure, or NULL if none yet.
/// Valid until the next failing libbarkeep call on this thread.
#[no_mangle]
pub extern "C" fn barkeep_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| {
        e.borrow()
            .as_ref()
            .map_or(std::ptr::null(), |e| e.message.as_ptr())
    })
}

/// The stable short name of an error code ("denied", "revoked", ...), or
/// NULL for an unknown code. A static string.
#[no_mangle]
pub extern "C" fn barkeep_error_slug(code: c_int) -> *const c_char {
    const SLUGS: &[(c_int, &str)] = &[
        (BARKEEP_ERR_IO, "io\0"),
        (BARKEEP_ERR_PROTOCOL, "protocol\0"),
        (BARKEEP_ERR_DISCONNECTED, "disconnected\0"),
        (BARKEEP_ERR_REVOKED, "revoked\0"),
        (BARKEEP_ERR_READ_ONLY, "read-only\0"),
        (BARKEEP_ERR_OUT_OF_RANGE, "out-of-range\0"),
        (BARKEEP_ERR_UNALIGNED_ACCESS, "unaligned-access\0"),
        (BARKEEP_ERR_MMAP_UNSUPPORTED, "mmap-unsupported\0"),
        (BARKEEP_ERR_USAGE, "usage\0"),
        (BARKEEP_ERR_UNEXPECTED, "unexpected\0"),
        (BARKEEP_ERR_ENVIRONMENT, "environment\0"),
    ];
    if let Some((_, s)) = SLUGS.iter().find(|(c, _)| *c == code) {
        return s.as_ptr().cast();
    }
    daemon_slug(code).map_or(std::ptr::null(), |s| s.as_ptr().cast())
}

/// NUL-terminated slugs of the daemon's codes, made once.
fn daemon_slug(code: c_int) -> Option<&'static CStr> {
    static SLUGS: std::sync::OnceLock<Vec<(c_int, CString)>> = std::sync::OnceLock::new();
    SLUGS
        .get_or_init(|| {
            barkeep_protocol::ErrorCode::ALL
                .iter()
                .map(|c| {
                    (
                        c_int::from(c.number()),
                        CString::new(c.slug()).expect("slug"),
                    )
                })
                .collect()
        })
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, s)| s.as_c_str())
}

/// Connects to barkeepd at `socket_path`, or with NULL at `$BARKEEP_SOCKET`
/// (else /run/barkeep/barkeep.sock). NULL on failure (see
/// `barkeep_last_error_message`). Free with `barkeep_disconnect`.
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn barkeep_connect(socket_path: *const c_char) -> *mut barkeep_client {
    guard_ptr(|| {
        // SAFETY: per this function's contract.
        let path = unsafe { opt_str(socket_path, "socket_path") }?;
        let client = match path {
            Some(p) => Client::connect(p),
            None => Client::connect_default(),
        }?;
        Ok(Box::into_raw(Box::new(barkeep_client {
            client,
            slices: Mutex::new(HashMap::new()),
        })))
    })
}

/// Closes the connection: the daemon ends every lease of it and their fds
/// are closed. Mappings stay mapped, but their accesses fail with
/// `BARKEEP_ERR_REVOKED` (raw pointer accesses may fault): unmap them.
/// NULL is ignored.
///
/// # Safety
/// `client` is NULL or came from `barkeep_connect` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn barkeep_disconnect(client: *mut barkeep_client) {
    let _ = guard(|| {
        if !client.is_null() {
            // SAFETY: per this function's contract, the pointer came from
            // Box::into_raw in barkeep_connect and is freed once.
            drop(unsafe { Box::from_raw(client) });
        }
        Ok(())
    });
}

/// Fills `out` with the daemon's status.
///
/// # Safety
/// `client` from `barkeep_connect`; `out` points at a `barkeep_status`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_get_status(
    client: *const barkeep_client,
    out: *mut barkeep_status,
) -> c_int {
    guard(|| {
        let c = nonnull(client, "client")?;
        let out = nonnull_mut(out, "out")?;
        let s = c.client.status()?;
        let w = c.client.welcome();
        copy_str(&mut out.daemon_version, &s.daemon_version);
        out.protocol_version = s.protocol_version;
        out.sessions = s.sessions;
        out.leases = s.leases;
        out.devices = s.devices.len() as u32;
        let caps = &s.capabilities;
        out.capabilities = [
            (caps.export, BARKEEP_CAP_EXPORT),
            (caps.mmap, BARKEEP_CAP_MMAP),
            (caps.revoke, BARKEEP_CAP_REVOKE),
            (caps.write_combining, BARKEEP_CAP_WRITE_COMBINING),
            (caps.device_revoke, BARKEEP_CAP_DEVICE_REVOKE),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit);
        out.admin = u32::from(w.admin);
        out.page_size = u64::from(s.page_size);
        out.uptime_ms = s.uptime_ms;
        out.session_id = w.session_id;
        Ok(())
    })
}

fn acquire_into(
    c: &barkeep_client,
    req: SliceRequest,
    out: &mut barkeep_lease,
) -> Result<(), Failure> {
    let slice = c.client.acquire(req)?;
    fill_lease(out, &slice);
    lock(&c.slices).insert(slice.lease().id, slice);
    Ok(())
}

/// Acquires a slice; on success `out` describes the lease and holds its fd.
///
/// # Safety
/// `client` from `barkeep_connect`; `request` points at a filled
/// `barkeep_slice_request`; `out` at a `barkeep_lease`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_acquire(
    client: *const barkeep_client,
    request: *const barkeep_slice_request,
    out: *mut barkeep_lease,
) -> c_int {
    guard(|| {
        let c = nonnull(client, "client")?;
        let r = nonnull(request, "request")?;
        let out = nonnull_mut(out, "out")?;
        // SAFETY: the request's device is a NUL-terminated string per the
        // contract.
        let device = unsafe { opt_str(r.device, "request->device") }?
            .ok_or_else(|| usage("request->device is NULL"))?;
        let access = match r.access {
            BARKEEP_ACCESS_RO => Access::ReadOnly,
            BARKEEP_ACCESS_RW => Access::ReadWrite,
            a => {
                return Err(usage(format!(
                    "request->access {a} is neither BARKEEP_ACCESS_RO nor _RW"
                )))
            }
        };
        let memattr = match r.memattr {
            BARKEEP_MEMATTR_UC => MemAttrRequest::Uncached,
            BARKEEP_MEMATTR_WC => MemAttrRequest::WriteCombining,
            BARKEEP_MEMATTR_PREFER_WC => MemAttrRequest::PreferWriteCombining,
            m => {
                return Err(usage(format!(
                    "request->memattr {m} is not a BARKEEP_MEMATTR_* value"
                )))
            }
        };
        acquire_into(
            c,
            SliceRequest {
                device: device.to_string(),
                bar: r.bar,
                offset: r.offset,
                length: r.length,
                access,
                memattr,
            },
            out,
        )
    })
}

/// Acquires a slice written as `DEVICE:BAR:OFFSET:LENGTH[:ro][:wc]` (as
/// `barkeep exec --slice` takes it), e.g. "nic0:2:0x10000:4K:ro".
///
/// # Safety
/// `client` from `barkeep_connect`; `spec` a NUL-terminated string; `out`
/// points at a `barkeep_lease`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_acquire_spec(
    client: *const barkeep_client,
    spec: *const c_char,
    out: *mut barkeep_lease,
) -> c_int {
    guard(|| {
        let c = nonnull(client, "client")?;
        let out = nonnull_mut(out, "out")?;
        // SAFETY: per this function's contract.
        let spec = unsafe { opt_str(spec, "spec") }?.ok_or_else(|| usage("spec is NULL"))?;
        let req = parse_slice_spec(spec).map_err(usage)?;
        acquire_into(c, req, out)
    })
}

/// Releases a lease of this client and closes its fd (`lease->fd` becomes
/// -1). Unmap its mappings first: accesses through them fail afterwards.
/// Releasing a lease that was revoked meanwhile succeeds.
///
/// # Safety
/// `client` from `barkeep_connect`; `lease` filled by `barkeep_acquire*`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_release(
    client: *const barkeep_client,
    lease: *mut barkeep_lease,
) -> c_int {
    guard(|| {
        let c = nonnull(client, "client")?;
        let lease = nonnull_mut(lease, "lease")?;
        let id = lease_id(lease)?;
        let slice = lock(&c.slices).remove(&id).ok_or_else(|| {
            usage(format!(
                "lease {id} is not held by this client (released twice?)"
            ))
        })?;
        lease.fd = -1;
        if slice.is_revoked() {
            return Ok(());
        }
        match c.client.release(id) {
            Ok(()) | Err(Error::Revoked { .. }) => Ok(()),
            Err(Error::Daemon(r)) if r.code == barkeep_protocol::ErrorCode::UnknownLease => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
}

/// 1 if the lease has ended (revoked by an administrator, the device, a
/// policy reload, the daemon's shutdown, or a lost connection), 0 if it is
/// live, -1 if `lease` is not held by this client (see the last error).
///
/// # Safety
/// `client` from `barkeep_connect`; `lease` filled by `barkeep_acquire*`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_is_revoked(
    client: *const barkeep_client,
    lease: *const barkeep_lease,
) -> c_int {
    let mut revoked = false;
    let rc = guard(|| {
        let c = nonnull(client, "client")?;
        let id = lease_id(nonnull(lease, "lease")?)?;
        let slices = lock(&c.slices);
        let slice = slices
            .get(&id)
            .ok_or_else(|| usage(format!("lease {id} is not held by this client")))?;
        revoked = slice.is_revoked();
        Ok(())
    });
    match rc {
        0 => c_int::from(revoked),
        _ => -1,
    }
}

/// Waits up to `timeout_ms` (-1: forever) for an event, e.g. a lease
/// revoked. On timeout returns 0 with `out->kind == BARKEEP_EVENT_NONE`.
///
/// # Safety
/// `client` from `barkeep_connect`; `out` points at a `barkeep_event`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_next_event(
    client: *const barkeep_client,
    timeout_ms: c_int,
    out: *mut barkeep_event,
) -> c_int {
    guard(|| {
        let c = nonnull(client, "client")?;
        let out = nonnull_mut(out, "out")?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        out.kind = BARKEEP_EVENT_NONE;
        out.reason = 0;
        copy_str(&mut out.lease_id, "");
        match c.client.next_event(timeout)? {
            None => {}
            Some(::barkeep_client::Event::Revoked { lease, reason }) => {
                out.kind = BARKEEP_EVENT_REVOKED;
                out.reason = ::barkeep_client::revoke_reason_code(reason);
                copy_str(&mut out.lease_id, &lease.to_string());
            }
        }
        Ok(())
    })
}

/// Maps `length` bytes of the slice from `offset` (in the slice, page
/// aligned; 0 and the lease's length map it all), read-only for a
/// read-only lease. Free with `barkeep_unmap`.
///
/// # Safety
/// `client` from `barkeep_connect`; `lease` filled by `barkeep_acquire*`;
/// `out` points at a `barkeep_mapping *`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_map(
    client: *const barkeep_client,
    lease: *const barkeep_lease,
    offset: u64,
    length: u64,
    out: *mut *mut barkeep_mapping,
) -> c_int {
    guard(|| {
        let c = nonnull(client, "client")?;
        let id = lease_id(nonnull(lease, "lease")?)?;
        let out = nonnull_mut(out, "out")?;
        *out = std::ptr::null_mut();
        let map = {
            let slices = lock(&c.slices);
            let slice = slices
                .get(&id)
                .ok_or_else(|| usage(format!("lease {id} is not held by this client")))?;
            slice.map_range(offset, length)?
        };
        *out = Box::into_raw(Box::new(barkeep_mapping { map }));
        Ok(())
    })
}

/// Unmaps a mapping. NULL is ignored.
///
/// # Safety
/// `mapping` is NULL or came from `barkeep_map` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn barkeep_unmap(mapping: *mut barkeep_mapping) {
    let _ = guard(|| {
        if !mapping.is_null() {
            // SAFETY: from Box::into_raw in barkeep_map, freed once.
            drop(unsafe { Box::from_raw(mapping) });
        }
        Ok(())
    });
}

/// The mapping's first byte, for direct (unchecked) access, e.g. through a
/// `volatile uint32_t *`. NULL for a NULL mapping.
///
/// # Safety
/// `mapping` is NULL or from `barkeep_map`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_mapping_ptr(mapping: *const barkeep_mapping) -> *mut c_void {
    // SAFETY: NULL or a live mapping per the contract.
    match unsafe { mapping.as_ref() } {
        Some(m) => m.map.as_ptr().cast(),
        None => std::ptr::null_mut(),
    }
}

/// The mapping's length in bytes (0 for NULL).
///
/// # Safety
/// `mapping` is NULL or from `barkeep_map`.
#[no_mangle]
pub unsafe extern "C" fn barkeep_mapping_len(mapping: *const barkeep_mapping) -> u64 {
    // SAFETY: NULL or a live mapping per the contract.
    unsafe { mapping.as_ref() }.map_or(0, |m| m.map.len())
}

mod access;
mod inherited;
pub use access::*;
pub use inherited::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn slug(code: c_int) -> Option<String> {
        let p = barkeep_error_slug(code);
        // SAFETY: NULL or a static NUL-terminated string.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string())
    }

    #[test]
    fn every_daemon_error_code_has_a_slug_and_a_constant() {
        let constants = [
            BARKEEP_ERR_MALFORMED,
            BARKEEP_ERR_OVERSIZED,
            BARKEEP_ERR_UNSUPPORTED_VERSION,
            BARKEEP_ERR_HANDSHAKE,
            BARKEEP_ERR_UNKNOWN_REQUEST,
            BARKEEP_ERR_BAD_ARGUMENT,
            BARKEEP_ERR_UNKNOWN_DEVICE,
            BARKEEP_ERR_BAD_BAR,
            BARKEEP_ERR_NO_SUCH_BAR,
            BARKEEP_ERR_ZERO_LENGTH,
            BARKEEP_ERR_UNALIGNED,
            BARKEEP_ERR_OVERFLOW,
            BARKEEP_ERR_OUT_OF_BOUNDS,
            BARKEEP_ERR_NOT_MAPPABLE,
            BARKEEP_ERR_RESERVED,
            BARKEEP_ERR_DENIED,
            BARKEEP_ERR_OUTSIDE_WINDOW,
            BARKEEP_ERR_ACCESS_DENIED,
            BARKEEP_ERR_WC_DENIED,
            BARKEEP_ERR_ADMIN_ONLY,
            BARKEEP_ERR_CONFLICT,
            BARKEEP_ERR_QUOTA,
            BARKEEP_ERR_LIMIT,
            BARKEEP_ERR_IDENTITY,
            BARKEEP_ERR_CONFIG,
            BARKEEP_ERR_UNKNOWN_LEASE,
            BARKEEP_ERR_UNSUPPORTED,
            BARKEEP_ERR_DEVICE_UNAVAILABLE,
            BARKEEP_ERR_KERNEL,
            BARKEEP_ERR_RANGE_BUSY,
            BARKEEP_ERR_INTERNAL,
        ];
        for code in barkeep_protocol::ErrorCode::ALL {
            let n = c_int::from(code.number());
            assert!(
                constants.contains(&n),
                "no BARKEEP_ERR_ constant for {code:?} ({n})"
            );
            assert_eq!(slug(n).as_deref(), Some(code.slug()));
        }
        assert_eq!(constants.len(), barkeep_protocol::ErrorCode::ALL.len());
        assert_eq!(slug(BARKEEP_ERR_REVOKED).as_deref(), Some("revoked"));
        assert_eq!(
            slug(BARKEEP_ERR_ENVIRONMENT).as_deref(),
            Some("environment")
        );
        assert_eq!(slug(9999), None);
    }

    #[test]
    fn client_codes_match_the_client_library() {
        use ::barkeep_client::ClientCode as C;
        for (c, n) in [
            (C::Io, BARKEEP_ERR_IO),
            (C::Protocol, BARKEEP_ERR_PROTOCOL),
            (C::Disconnected, BARKEEP_ERR_DISCONNECTED),
            (C::Revoked, BARKEEP_ERR_REVOKED),
            (C::ReadOnly, BARKEEP_ERR_READ_ONLY),
            (C::OutOfRange, BARKEEP_ERR_OUT_OF_RANGE),
            (C::Unaligned, BARKEEP_ERR_UNALIGNED_ACCESS),
            (C::MapUnsupported, BARKEEP_ERR_MMAP_UNSUPPORTED),
            (C::Usage, BARKEEP_ERR_USAGE),
            (C::Unexpected, BARKEEP_ERR_UNEXPECTED),
            (C::Environment, BARKEEP_ERR_ENVIRONMENT),
        ] {
            assert_eq!(c_int::from(c.number()), n);
            assert_eq!(slug(n).as_deref(), Some(c.slug()));
        }
    }

    #[test]
    fn failures_are_recorded_per_thread_and_panics_do_not_escape() {
        // SAFETY: NULL arguments are part of the contract.
        let rc = unsafe { barkeep_get_status(std::ptr::null(), std::ptr::null_mut()) };
        assert_eq!(rc, BARKEEP_ERR_USAGE);
        assert_eq!(barkeep_last_error_code(), BARKEEP_ERR_USAGE);
        // SAFETY: a static string from the library.
        let msg = unsafe { CStr::from_ptr(barkeep_last_error_message()) };
        assert_eq!(msg.to_str().unwrap(), "client is NULL");
        // Another thread has its own last error.
        std::thread::spawn(|| assert_eq!(barkeep_last_error_code(), 0))
            .join()
            .unwrap();
        let rc = guard(|| panic!("boom"));
        assert_eq!(rc, BARKEEP_ERR_UNEXPECTED);
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(barkeep_last_error_message()) };
        assert!(msg.to_str().unwrap().contains("boom"));
        // Connecting to nowhere fails cleanly with NULL.
        // SAFETY: a NUL-terminated literal.
        let c = unsafe { barkeep_connect(c"/nonexistent/barkeep.sock".as_ptr()) };
        assert!(c.is_null());
        assert_eq!(barkeep_last_error_code(), BARKEEP_ERR_IO);
    }

    #[test]
    fn names_are_cut_at_a_character_boundary_and_terminated() {
        let mut buf = [1 as c_char; 6];
        copy_str(&mut buf, "abcdé");
        assert_eq!(buf.map(|b| b as u8), *b"abcd\0\x01");
        copy_str(&mut buf, "ab");
        assert_eq!(
            &buf[..3].iter().map(|b| *b as u8).collect::<Vec<_>>(),
            b"ab\0"
        );
    }
}
