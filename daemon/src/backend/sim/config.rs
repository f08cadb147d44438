//! What a simulated device is made of (`sim = { bars = [...] }` in the
//! configuration, parsed by [`crate::config`]).

use barkeep_protocol::{Range, Reserved};

/// `sim = { bars = [...] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The BARs, sorted by index.
    pub bars: Vec<SimBarConfig>,
}

/// One simulated BAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBarConfig {
    /// BAR index 0..=5.
    pub index: u32,
    /// Size: a power of two, at least 4 KiB.
    pub size: u64,
    /// Mappable (sparse-mmap) areas, sorted; empty means the whole BAR.
    pub mappable: Vec<Range>,
    /// Ranges never granted (like an MSI-X table).
    pub reserved: Vec<Reserved>,
}
