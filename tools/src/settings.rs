//! How a component's settings are put together: built-in defaults, then the keys of its
//! `--config` file, then its command-line flags, then one check of the whole. A flag with a
//! default of its own would hide the file's key, so the component flags are `Option`s (or
//! switches), and the required ones are required of "the flag or the key" here rather than
//! by clap.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use shoal_servers::config;

/// A component's config file, or no file (every key unset).
#[derive(Debug)]
pub struct ConfigFile<T> {
    pub keys: T,
    path: Option<PathBuf>,
}

impl<T: DeserializeOwned + Default> ConfigFile<T> {
    /// Reads and parses `path`, if given. The error names the path, and for a bad key or value
    /// the key and its line.
    pub fn load(path: Option<&Path>) -> Result<ConfigFile<T>, String> {
        let keys = match path {
            Some(path) => config::load(path).map_err(|e| e.to_string())?,
            None => T::default(),
        };
        Ok(ConfigFile {
            keys,
            path: path.map(Path::to_path_buf),
        })
    }
}

impl<T> ConfigFile<T> {
    /// `message`, prefixed with the file's path when there is a file.
    pub fn error(&self, message: impl Display) -> String {
        match &self.path {
            Some(path) => format!("{}: {message}", path.display()),
            None => message.to_string(),
        }
    }

    /// The flag's value, else the file's, else an error naming both.
    pub fn required<V>(
        &self,
        flag_value: Option<V>,
        file_value: Option<V>,
        flag: &str,
        key: &str,
    ) -> Result<V, String> {
        flag_value
            .or(file_value)
            .ok_or_else(|| missing(flag, Some(key)))
    }
}

/// The error for a setting given neither on the command line nor (`key`) in a file.
pub fn missing(flag: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => format!("{flag} is required: give it, or set {key} in the --config file"),
        None => format!("{flag} is required"),
    }
}
