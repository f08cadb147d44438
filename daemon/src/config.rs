//! TOML configuration -> validated [`Config`].

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {}

impl Config {
    /// Parses and validates a configuration file's text.
    pub fn from_toml_str(_text: &str) -> Result<Config, String> {
        todo!("daemon helper")
    }
}
