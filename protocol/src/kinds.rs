//! The one table of request kinds: for each [`Request`] variant its wire
//! index (postcard's variant tag, so the table's order is the enum's), its
//! name in logs and metrics, whether the daemon answers it, whether it may
//! change the lease table, and who may send it. The codec, the daemon's
//! metrics, its dispatch and its admin checks all read this table, so a
//! request kind is described once.

use crate::Request;

/// Who may send a request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// Any connected client.
    Anyone,
    /// Administrators only (`[admin]` in the daemon's configuration).
    Admin,
    /// Anyone, but some forms are for administrators only; the daemon
    /// checks the request's fields (listing every session's leases,
    /// explaining for another identity, metrics under `admin_only`).
    Depends,
}

macro_rules! request_kinds {
    ($(
        $(#[$doc:meta])*
        $kind:ident = $wire:literal, $pat:pat, $name:literal,
            answered: $answered:literal, changes_leases: $changes:literal, who: $who:ident;
    )*) => {
        /// The kind of a [`Request`], without its fields.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum RequestKind {
            $( $(#[$doc])* $kind, )*
        }

        impl RequestKind {
            /// Every kind, in wire order (`ALL[i].wire_index() == i`).
            pub const ALL: &'static [RequestKind] = &[$(RequestKind::$kind,)*];

            /// The variant tag of this kind in the encoding of [`Request`].
            pub const fn wire_index(self) -> u32 {
                match self {
                    $( RequestKind::$kind => $wire, )*
                }
            }

            /// Short stable name, for logs and metrics labels.
            pub const fn name(self) -> &'static str {
                match self {
                    $( RequestKind::$kind => $name, )*
                }
            }

            /// Whether the daemon sends a reply.
            pub const fn answered(self) -> bool {
                match self {
                    $( RequestKind::$kind => $answered, )*
                }
            }

            /// Whether the request may change the lease table (what a
            /// daemon handing its leases to a successor refuses).
            pub const fn changes_leases(self) -> bool {
                match self {
                    $( RequestKind::$kind => $changes, )*
                }
            }

            /// Who may send it.
            pub const fn who(self) -> Who {
                match self {
                    $( RequestKind::$kind => Who::$who, )*
                }
            }
        }

        impl Request {
            /// This request's kind.
            pub fn kind(&self) -> RequestKind {
                match self {
                    $( $pat => RequestKind::$kind, )*
                }
            }
        }
    };
}

request_kinds! {
    /// [`Request::Status`].
    Status = 0, Request::Status, "status",
        answered: true, changes_leases: false, who: Anyone;
    /// [`Request::ListDevices`].
    ListDevices = 1, Request::ListDevices, "list-devices",
        answered: true, changes_leases: false, who: Anyone;
    /// [`Request::Acquire`].
    Acquire = 2, Request::Acquire(_), "acquire",
        answered: true, changes_leases: true, who: Anyone;
    /// [`Request::Release`].
    Release = 3, Request::Release { .. }, "release",
        answered: true, changes_leases: true, who: Anyone;
    /// [`Request::ListLeases`]; `all` is for administrators.
    ListLeases = 4, Request::ListLeases { .. }, "list-leases",
        answered: true, changes_leases: false, who: Depends;
    /// [`Request::Revoke`].
    Revoke = 5, Request::Revoke(_), "revoke",
        answered: true, changes_leases: true, who: Admin;
    /// [`Request::Peek`].
    Peek = 6, Request::Peek { .. }, "peek",
        answered: true, changes_leases: false, who: Admin;
    /// [`Request::Poke`].
    Poke = 7, Request::Poke { .. }, "poke",
        answered: true, changes_leases: false, who: Admin;
    /// [`Request::Explain`]; another identity's is for administrators.
    Explain = 8, Request::Explain(_), "explain",
        answered: true, changes_leases: false, who: Depends;
    /// [`Request::Reload`].
    Reload = 9, Request::Reload, "reload",
        answered: true, changes_leases: true, who: Admin;
    /// [`Request::Reclaim`].
    Reclaim = 10, Request::Reclaim { .. }, "reclaim",
        answered: true, changes_leases: true, who: Anyone;
    /// [`Request::Metrics`]; administrators only under `[metrics] admin_only`.
    Metrics = 11, Request::Metrics, "metrics",
        answered: true, changes_leases: false, who: Depends;
    /// [`Request::ReleaseNoReply`].
    ReleaseNoReply = 12, Request::ReleaseNoReply { .. }, "release-no-reply",
        answered: false, changes_leases: true, who: Anyone;
    /// [`Request::ListLeasesPage`]; `all` is for administrators.
    ListLeasesPage = 13, Request::ListLeasesPage { .. }, "list-leases-page",
        answered: true, changes_leases: false, who: Depends;
}

/// Number of request kinds this version knows; a larger tag is a newer
/// peer's.
pub const REQUEST_KINDS: usize = RequestKind::ALL.len();

// The table is dense and in wire order; that the wire order is the enum's
// is pinned by the golden-byte tests.
const _: () = {
    let mut i = 0;
    while i < RequestKind::ALL.len() {
        assert!(
            RequestKind::ALL[i].wire_index() as usize == i,
            "request_kinds!: wire indexes must be 0, 1, 2, ... in table order"
        );
        i += 1;
    }
};
