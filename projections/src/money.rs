//! Money at the SQL edge: amounts are stored as integer nanodollars (1e-9 USD) and
//! handled as `rust_decimal::Decimal` everywhere else. Never floats.

use crate::Error;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places of a nanodollar amount.
pub const NANO_SCALE: u32 = 9;

/// Converts stored nanodollars to dollars, exactly (scale 9).
pub fn nanos_to_usd(nanos: i64) -> Decimal {
    Decimal::new(nanos, NANO_SCALE)
}

/// Converts dollars to nanodollars. Amounts finer than a nanodollar (possible only
/// when a multiplier such as the batch discount halves an odd nanodollar price) are
/// rounded half to even; everything priced at list rates is exact.
pub fn usd_to_nanos(usd: Decimal) -> Result<i64, Error> {
    let rounded = usd.round_dp_with_strategy(NANO_SCALE, RoundingStrategy::MidpointNearestEven);
    let scaled = rounded
        .checked_mul(Decimal::from(1_000_000_000_i64))
        .ok_or_else(|| Error::Corrupt(format!("amount {usd} overflows")))?;
    scaled
        .to_i64()
        .ok_or_else(|| Error::Corrupt(format!("amount {usd} does not fit in nanodollars")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn round_trips_exactly() {
        let d = Decimal::from_str("12.345678901").unwrap();
        let n = usd_to_nanos(d).unwrap();
        assert_eq!(n, 12_345_678_901);
        assert_eq!(nanos_to_usd(n), d);
    }

    #[test]
    fn sub_nano_rounds_half_even() {
        assert_eq!(
            usd_to_nanos(Decimal::from_str("0.0000000005").unwrap()).unwrap(),
            0
        );
        assert_eq!(
            usd_to_nanos(Decimal::from_str("0.0000000015").unwrap()).unwrap(),
            2
        );
    }
}
