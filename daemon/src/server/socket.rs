//! Every listening Unix socket of the daemon (the client socket, the
//! takeover socket, the metrics socket) is made by [`bind_unix`]: the
//! parent directory made, a stale socket file replaced but a live one
//! refused, the permission bits set.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// What a listening socket is, for its error messages.
pub struct Role {
    /// How the socket is named in messages ("socket", "metrics socket").
    pub name: &'static str,
    /// The whole message when something live already listens at the path
    /// (`{}` is replaced by the path).
    pub busy: &'static str,
    /// What to do instead when the path is not a socket.
    pub elsewhere: &'static str,
}

/// Creates a listening socket at `path` with `bind` (parent directory
/// included), replacing a stale socket but not one where `probe` finds a
/// live listener, and sets the permission bits to `mode`.
pub fn bind_unix<L>(
    path: &Path,
    mode: u32,
    role: &Role,
    probe: impl Fn(&Path) -> bool,
    bind: impl FnOnce(&Path) -> std::io::Result<L>,
) -> Result<L, String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            format!(
                "cannot create the {}'s directory {}: {e}",
                role.name,
                parent.display()
            )
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if probe(path) {
                return Err(role.busy.replace("{}", &path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(|e| {
                format!(
                    "cannot remove the stale {} {}: {e}",
                    role.name,
                    path.display()
                )
            })?;
        }
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket: remove it or {}",
                path.display(),
                role.elsewhere
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    }
    let listener = bind(path)
        .map_err(|e| format!("cannot listen on the {} {}: {e}", role.name, path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:04o} on {}: {e}", path.display()))?;
    Ok(listener)
}
