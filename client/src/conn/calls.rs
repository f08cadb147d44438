//! The messages of a session, without I/O: the `Hello` datagram and the
//! daemon's answer to it, and one [`Call`] per request (the request, and how
//! its reply becomes the caller's value) shared by the blocking and the
//! async client.

use super::{lock, Delivery, Session};
use crate::error::{Error, Result};
use barkeep_protocol::{
    decode_daemon, encode_client, ClientMessage, DaemonMessage, DeviceInfo, Hello, LeaseId,
    LeaseInfo, Request, Response, RevokeReason, RevokeTarget, SliceRequest, StatusInfo, Welcome,
    PROTOCOL_VERSION,
};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The `Hello` datagram.
pub(crate) fn hello(client_name: &str) -> Result<Vec<u8>> {
    let name: String = truncate_name(client_name);
    encode_client(&ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: name,
    }))
    .map_err(|e| Error::Protocol(format!("cannot encode hello: {e}")))
}

fn truncate_name(name: &str) -> String {
    let mut end = name.len().min(barkeep_protocol::MAX_CLIENT_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Interprets the daemon's answer to `Hello`.
pub(crate) fn handshake_reply(bytes: &[u8], fds: Vec<OwnedFd>, truncated: bool) -> Result<Welcome> {
    if bytes.is_empty() && !truncated {
        return Err(Error::Disconnected(
            "barkeepd closed the connection during the handshake".into(),
        ));
    }
    if !fds.is_empty() {
        return Err(Error::Protocol(format!(
            "{} fd(s) attached to the handshake reply",
            fds.len()
        )));
    }
    if truncated {
        return Err(Error::Protocol("oversized handshake reply".into()));
    }
    match decode_daemon(bytes) {
        Ok(DaemonMessage::Welcome(w)) => Ok(w),
        Ok(DaemonMessage::Refused(r)) => Err(Error::Refused(r)),
        Ok(other) => Err(Error::Protocol(format!(
            "expected Welcome or Refused, got {other:?}"
        ))),
        Err(e) => Err(Error::Protocol(format!("undecodable handshake reply: {e}"))),
    }
}

/// The client name used when none is given: the program's file name.
pub(crate) fn default_client_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "barkeep-client".into())
}

/// A request and how to turn its reply into the caller's type; shared by the
/// blocking and async clients so each operation is written once.
pub(crate) struct Call<T> {
    pub(crate) request: Request,
    pub(crate) finish: Finish<T>,
}

/// Turns a delivered reply into the caller's value.
pub(crate) type Finish<T> = Box<dyn FnOnce(&Arc<Session>, Delivery) -> Result<T> + Send>;

fn unexpected(want: &str, got: &Response) -> Error {
    Error::Protocol(format!("expected a {want} reply, got {got:?}"))
}

pub(crate) fn status() -> Call<StatusInfo> {
    Call {
        request: Request::Status,
        finish: Box::new(|_, d| match d.response {
            Response::Status(s) => Ok(s),
            other => Err(unexpected("Status", &other)),
        }),
    }
}

pub(crate) fn devices() -> Call<Vec<DeviceInfo>> {
    Call {
        request: Request::ListDevices,
        finish: Box::new(|_, d| match d.response {
            Response::Devices(v) => Ok(v),
            other => Err(unexpected("Devices", &other)),
        }),
    }
}

pub(crate) fn acquire(req: SliceRequest) -> Call<crate::Slice> {
    Call {
        request: Request::Acquire(req),
        finish: Box::new(|session, d| match (d.response, d.grant) {
            (Response::Granted(lease, _), Some((fd, flag))) => {
                Ok(crate::Slice::new(lease, fd, flag, session.clone()))
            }
            (other, _) => Err(unexpected("Granted", &other)),
        }),
    }
}

pub(crate) fn release(lease: LeaseId) -> Call<()> {
    Call {
        request: Request::Release { lease },
        finish: Box::new(move |session, d| match d.response {
            Response::Released => {
                // A slice of this lease in this process must stop using it.
                let flag = {
                    let mut st = lock(&session.conn.state);
                    st.tokens.remove(&lease);
                    st.leases.remove(&lease)
                };
                if let Some(flag) = flag {
                    flag.set(RevokeReason::Released);
                }
                Ok(())
            }
            other => Err(unexpected("Released", &other)),
        }),
    }
}

pub(crate) fn leases(all: bool) -> Call<Vec<LeaseInfo>> {
    Call {
        request: Request::ListLeases { all },
        finish: Box::new(|_, d| match d.response {
            Response::Leases(v) => Ok(v),
            other => Err(unexpected("Leases", &other)),
        }),
    }
}

/// One page of a listing ([`Request::ListLeasesPage`]): the leases after
/// `after`, and where the next page starts (`None` after the last).
pub(crate) fn leases_page(all: bool, after: u64) -> Call<(Vec<LeaseInfo>, Option<u64>)> {
    Call {
        request: Request::ListLeasesPage { all, after },
        finish: Box::new(|_, d| match d.response {
            Response::LeasesPage { leases, next } => Ok((leases, next)),
            other => Err(unexpected("LeasesPage", &other)),
        }),
    }
}

/// Whether an error says the daemon does not know a request (an older
/// daemon: the client asks the old way).
pub(crate) fn unknown_request(e: &Error) -> bool {
    e.daemon_code() == Some(barkeep_protocol::ErrorCode::UnknownRequest)
}

pub(crate) fn revoke(target: RevokeTarget) -> Call<u32> {
    Call {
        request: Request::Revoke(target),
        finish: Box::new(|_, d| match d.response {
            Response::Revoked { count } => Ok(count),
            other => Err(unexpected("Revoked", &other)),
        }),
    }
}

pub(crate) fn peek(device: &str, bar: u32, offset: u64, length: u64) -> Call<Vec<u8>> {
    Call {
        request: Request::Peek {
            device: device.to_string(),
            bar,
            offset,
            length,
        },
        finish: Box::new(|_, d| match d.response {
            Response::Bytes(b) => Ok(b),
            other => Err(unexpected("Bytes", &other)),
        }),
    }
}

pub(crate) fn poke(device: &str, bar: u32, offset: u64, data: &[u8]) -> Call<()> {
    Call {
        request: Request::Poke {
            device: device.to_string(),
            bar,
            offset,
            data: data.to_vec(),
        },
        finish: Box::new(|_, d| match d.response {
            Response::Poked => Ok(()),
            other => Err(unexpected("Poked", &other)),
        }),
    }
}

pub(crate) fn explain(
    request: barkeep_protocol::ExplainRequest,
) -> Call<barkeep_protocol::Decision> {
    Call {
        request: Request::Explain(request),
        finish: Box::new(|_, d| match d.response {
            Response::Decision(decision) => Ok(decision),
            other => Err(unexpected("Decision", &other)),
        }),
    }
}

pub(crate) fn reload() -> Call<(u32, u32)> {
    Call {
        request: Request::Reload,
        finish: Box::new(|_, d| match d.response {
            Response::Reloaded { grants, revoked } => Ok((grants, revoked)),
            other => Err(unexpected("Reloaded", &other)),
        }),
    }
}

pub(crate) fn metrics() -> Call<String> {
    Call {
        request: Request::Metrics,
        finish: Box::new(|_, d| match d.response {
            Response::Metrics(text) => Ok(text),
            other => Err(unexpected("Metrics", &other)),
        }),
    }
}
