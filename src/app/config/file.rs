//! The TOML file under flags and environment, and the defaults alone.

use clap::{ArgMatches, parser::ValueSource};

use super::Settings;

impl Settings {
    /// Overlays the TOML file named by `config` under everything given by
    /// flag or environment.
    pub fn apply_file(self, matches: &ArgMatches) -> Result<Settings, String> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let file: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut merged = toml::Table::try_from(&self).map_err(|e| e.to_string())?;
        for (key, value) in file {
            // TOML-only sections ([ext_authz], [security_context], …) are no clap args.
            let is_arg = matches.try_contains_id(&key).is_ok();
            let given = is_arg
                && matches!(
                    matches.value_source(&key),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
            if !given {
                merged.insert(key, value);
            }
        }
        merged
            .try_into()
            .map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.message()))
    }

    pub fn hash_params(&self) -> crate::auth::password::HashParams {
        crate::auth::password::HashParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// Defaults, as `velro-authz` would run with no flags, file or environment.
    pub fn defaults() -> Result<Settings, clap::Error> {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        let matches = <Only as clap::CommandFactory>::command()
            .no_binary_name(true)
            .try_get_matches_from(Vec::<String>::new())?;
        Ok(Only::from_arg_matches(&matches)?.settings)
    }
}
