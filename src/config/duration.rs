//! Duration settings: seconds as the user writes them (fractions allowed), checked and
//! bounded.

use super::ConfigError;
use std::time::Duration;

/// The longest duration any setting accepts: one year. Deadlines are computed by adding a
/// setting to the current time; bounding every setting keeps that sum far from overflowing.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A duration setting in seconds: finite, not negative (nor 0 unless `allow_zero`), at most
/// [`MAX_SECONDS`].
pub fn seconds(field: &str, v: f64, allow_zero: bool) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) {
        let bound = if allow_zero {
            "at least 0"
        } else {
            "greater than 0"
        };
        return Err(ConfigError::invalid(
            field,
            format!("expected {v} to be {bound}"),
        ));
    }
    if v > MAX_SECONDS {
        return Err(ConfigError::invalid(
            field,
            format!("expected {v} to be at most {MAX_SECONDS} (one year)"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}
