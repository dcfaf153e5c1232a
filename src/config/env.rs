//! Environment overrides: `BATTERYHAWK_<SECTION>_<KEY>` sets `<section>.<key>`, read as the type the key
//! has (keys containing `_` work: the section is the first word; a list of strings is comma-separated). An unknown section or key, or a value
//! of the wrong type, is an error naming the variable.

use super::{Config, ConfigError};

/// Prefix of the environment overrides.
const ENV_PREFIX: &str = "BATTERYHAWK_";

/// Apply `BATTERYHAWK_<SECTION>_<KEY>` overrides. The value is read as the type the key has.
pub(super) fn apply_env(
    config: Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    if overrides.is_empty() {
        return Ok(config);
    }
    overrides.sort();
    let mut table = toml::Table::try_from(&config)
        .map_err(|e| ConfigError::Invalid(format!("internal: {e}")))?;
    for (var, value) in overrides {
        let err = |m: String| ConfigError::Env(var.clone(), m);
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let (section, key) = rest
            .split_once('_')
            .ok_or_else(|| err("expected BATTERYHAWK_<SECTION>_<KEY>".into()))?;
        let Some(toml::Value::Table(sec)) = table.get_mut(section) else {
            return Err(err(format!("there is no [{section}] section")));
        };
        let Some(slot) = sec.get_mut(key) else {
            return Err(err(format!("[{section}] has no key '{key}'")));
        };
        *slot = match slot {
            toml::Value::String(_) => toml::Value::String(value),
            toml::Value::Integer(_) => toml::Value::Integer(
                value
                    .trim()
                    .parse()
                    .map_err(|_| err(format!("'{value}' is not a whole number")))?,
            ),
            toml::Value::Float(_) => toml::Value::Float(
                value
                    .trim()
                    .parse()
                    .map_err(|_| err(format!("'{value}' is not a number")))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(match value.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(err(format!("'{value}' is not true or false"))),
            }),
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.into()))
                        .collect(),
                )
            }
            _ => return Err(err("this key cannot be set from the environment".into())),
        };
        toml::Value::Table(table.clone())
            .try_into::<Config>()
            .map_err(|e| err(e.to_string().trim_end().to_string()))?;
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
}
